/**
 * ghz without --proto asks the server: gRPC server reflection (v1). Fetches
 * the file that defines the service and every file it imports, then loads
 * them with proto-loader as a FileDescriptorSet.
 */
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import descriptor from 'protobufjs/ext/descriptor/index.js';
import { PROTO_DIR } from '../../src/protos.ts';

interface FileDescriptorProto {
  name?: string;
  dependency?: string[];
}

interface ReflectionResponse {
  message_response?: string;
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_code: number; error_message: string };
}

const REFLECTION_PROTO = join(PROTO_DIR, 'grpc', 'reflection', 'v1', 'reflection.proto');
const descriptors = descriptor as unknown as {
  FileDescriptorProto: { decode(b: Uint8Array): FileDescriptorProto };
  FileDescriptorSet: { encode(m: { file: FileDescriptorProto[] }): { finish(): Uint8Array } };
};

export async function packageDefinitionByReflection(
  host: string,
  service: string,
  metadata: grpc.Metadata,
  options: protoLoader.Options,
): Promise<protoLoader.PackageDefinition> {
  const def = protoLoader.loadSync(REFLECTION_PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
  const method = (def['grpc.reflection.v1.ServerReflection'] as Record<string, protoLoader.MethodDefinition<object, ReflectionResponse>>)
    .ServerReflectionInfo!;
  const client = new grpc.Client(host, grpc.credentials.createInsecure());
  const call = client.makeBidiStreamRequest(
    method.path,
    method.requestSerialize as (v: object) => Buffer,
    method.responseDeserialize as (b: Buffer) => ReflectionResponse,
    metadata,
    { deadline: Date.now() + 10_000 },
  );
  const files = new Map<string, FileDescriptorProto>();
  const asked = new Set<string>();
  let outstanding = 0;
  const ask = (request: object) => {
    outstanding++;
    call.write(request);
  };
  try {
    return await new Promise<protoLoader.PackageDefinition>((resolve, reject) => {
      call.on('data', (response: ReflectionResponse) => {
        outstanding--;
        if (response.error_response) {
          reject(new Error(`reflection: ${response.error_response.error_message} (asked for ${service})`));
          return;
        }
        for (const bytes of response.file_descriptor_response?.file_descriptor_proto ?? []) {
          const file = descriptors.FileDescriptorProto.decode(bytes);
          files.set(file.name ?? '', file);
          for (const dep of file.dependency ?? []) {
            if (!files.has(dep) && !asked.has(dep)) {
              asked.add(dep);
              ask({ file_by_filename: dep });
            }
          }
        }
        if (outstanding === 0) {
          call.end();
          const set = Buffer.from(descriptors.FileDescriptorSet.encode({ file: [...files.values()] }).finish());
          resolve(protoLoader.loadFileDescriptorSetFromBuffer(set, options));
        }
      });
      call.on('error', (e: grpc.ServiceError) => reject(new Error(`reflection on ${host} failed: ${e.details ?? e.message}; pass --proto`)));
      ask({ file_containing_symbol: service });
    });
  } finally {
    client.close();
  }
}
