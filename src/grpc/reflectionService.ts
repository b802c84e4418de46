/**
 * gRPC server reflection, v1 and v1alpha (the same messages under two
 * package names), answered from build/tenantd.binpb: each file is served as
 * the exact bytes buf wrote, which are protoc's FileDescriptorProtos, with
 * their real names, dependencies and `XxxEntry` map messages. Clients such as
 * grpcurl and Python's descriptor_pool load them without repairs, which the
 * descriptors that proto-loader regenerates could not promise.
 *
 * Like grpc-go, a file request answers with the file and the files it
 * imports, transitively, leaving out imports this stream has already sent.
 * Reflection needs no key: it describes the API, never a tenant's data.
 */
import { status as Status, type ServerDuplexStream, type UntypedServiceImplementation } from '@grpc/grpc-js';
import type { FileDescriptor, MessageDescriptor } from '../protos.ts';

export const REFLECTION_SERVICES = ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

interface ReflectionRequest {
  host?: string;
  message_request?: string;
  file_by_filename?: string;
  file_containing_symbol?: string;
  file_containing_extension?: { containing_type: string; extension_number: number };
  all_extension_numbers_of_type?: string;
  list_services?: string;
}

/** Each FileDescriptorProto's bytes, as they sit in the set (field 1, repeated). */
export function splitDescriptorSet(set: Buffer): Buffer[] {
  const files: Buffer[] = [];
  let offset = 0;
  const varint = (): number => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      if (offset >= set.length) throw new Error('descriptor set: truncated varint');
      const byte = set[offset++]!;
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value;
    }
  };
  while (offset < set.length) {
    const tag = varint();
    if (tag !== ((1 << 3) | 2)) throw new Error(`descriptor set: unexpected tag ${tag}`);
    const length = varint();
    files.push(set.subarray(offset, offset + length));
    offset += length;
  }
  return files;
}

export class DescriptorIndex {
  private readonly bytesByFile = new Map<string, Buffer>();
  private readonly depsByFile = new Map<string, string[]>();
  /** Every fully qualified name a client may ask about -> the file defining it. */
  private readonly fileBySymbol = new Map<string, string>();
  private readonly messages = new Set<string>();
  /** `extendee#number` -> file. */
  private readonly fileByExtension = new Map<string, string>();
  private readonly extensionNumbers = new Map<string, number[]>();

  constructor(raw: Buffer[], decoded: FileDescriptor[]) {
    if (raw.length !== decoded.length) throw new Error('descriptor set: raw and decoded files differ in number');
    decoded.forEach((file, i) => {
      this.bytesByFile.set(file.name, raw[i]!);
      this.depsByFile.set(file.name, file.dependency ?? []);
      const scope = file.package ? `${file.package}.` : '';
      for (const message of file.messageType ?? []) this.addMessage(file.name, scope, message);
      for (const enumType of file.enumType ?? []) this.addEnum(file.name, scope, enumType);
      for (const service of file.service ?? []) {
        this.fileBySymbol.set(`${scope}${service.name}`, file.name);
        for (const method of service.method ?? []) this.fileBySymbol.set(`${scope}${service.name}.${method.name}`, file.name);
      }
      for (const extension of file.extension ?? []) this.addExtension(file.name, scope, extension);
    });
  }

  private addMessage(file: string, scope: string, message: MessageDescriptor): void {
    const full = `${scope}${message.name}`;
    this.fileBySymbol.set(full, file);
    this.messages.add(full);
    for (const field of message.field ?? []) this.fileBySymbol.set(`${full}.${field.name}`, file);
    for (const oneof of message.oneofDecl ?? []) this.fileBySymbol.set(`${full}.${oneof.name}`, file);
    for (const nested of message.nestedType ?? []) this.addMessage(file, `${full}.`, nested);
    for (const enumType of message.enumType ?? []) this.addEnum(file, `${full}.`, enumType);
    for (const extension of message.extension ?? []) this.addExtension(file, `${full}.`, extension);
  }

  private addEnum(file: string, scope: string, enumType: { name: string; value?: { name: string }[] }): void {
    this.fileBySymbol.set(`${scope}${enumType.name}`, file);
    // Enum values are scoped like their enum's siblings (C++ scoping rules).
    for (const value of enumType.value ?? []) this.fileBySymbol.set(`${scope}${value.name}`, file);
  }

  private addExtension(file: string, scope: string, extension: { name: string; number: number; extendee?: string }): void {
    this.fileBySymbol.set(`${scope}${extension.name}`, file);
    const extendee = (extension.extendee ?? '').replace(/^\./, '');
    this.fileByExtension.set(`${extendee}#${extension.number}`, file);
    this.extensionNumbers.set(extendee, [...(this.extensionNumbers.get(extendee) ?? []), extension.number]);
  }

  get fileNames(): string[] {
    return [...this.bytesByFile.keys()];
  }

  get symbols(): string[] {
    return [...this.fileBySymbol.keys()];
  }

  fileOf(symbol: string): string | undefined {
    return this.fileBySymbol.get(symbol.replace(/^\./, ''));
  }

  fileOfExtension(containingType: string, number: number): string | undefined {
    return this.fileByExtension.get(`${containingType.replace(/^\./, '')}#${number}`);
  }

  extensionsOf(type: string): number[] | undefined {
    const name = type.replace(/^\./, '');
    return this.messages.has(name) ? (this.extensionNumbers.get(name) ?? []) : undefined;
  }

  /** `file` and its imports, transitively, skipping imports already in `sent` (which this adds to). */
  withDependencies(file: string, sent: Set<string>): Buffer[] {
    const out: Buffer[] = [];
    const queue = [file];
    const seen = new Set<string>();
    while (queue.length) {
      const name = queue.shift()!;
      if (seen.has(name)) continue;
      seen.add(name);
      const bytes = this.bytesByFile.get(name);
      if (!bytes) continue;
      if (name === file || !sent.has(name)) {
        out.push(bytes);
        sent.add(name);
      }
      queue.push(...(this.depsByFile.get(name) ?? []));
    }
    return out;
  }

  has(file: string): boolean {
    return this.bytesByFile.has(file);
  }
}

function notFound(message: string) {
  return { error_response: { error_code: Status.NOT_FOUND, error_message: message } };
}

/**
 * Handlers for either reflection version; `services` are the names that
 * `list_services` reports: those the server really serves.
 */
export function reflectionService(index: DescriptorIndex, services: readonly string[]): UntypedServiceImplementation {
  const answer = (request: ReflectionRequest, sent: Set<string>): object => {
    switch (request.message_request) {
      case 'file_by_filename': {
        const name = request.file_by_filename!;
        if (!index.has(name)) return notFound(`file not found: ${name}`);
        return { file_descriptor_response: { file_descriptor_proto: index.withDependencies(name, sent) } };
      }
      case 'file_containing_symbol': {
        const file = index.fileOf(request.file_containing_symbol!);
        if (!file) return notFound(`symbol not found: ${request.file_containing_symbol}`);
        return { file_descriptor_response: { file_descriptor_proto: index.withDependencies(file, sent) } };
      }
      case 'file_containing_extension': {
        const { containing_type, extension_number } = request.file_containing_extension!;
        const file = index.fileOfExtension(containing_type, extension_number);
        if (!file) return notFound(`extension not found: ${containing_type} ${extension_number}`);
        return { file_descriptor_response: { file_descriptor_proto: index.withDependencies(file, sent) } };
      }
      case 'all_extension_numbers_of_type': {
        const type = request.all_extension_numbers_of_type!;
        const numbers = index.extensionsOf(type);
        if (!numbers) return notFound(`message type not found: ${type}`);
        return { all_extension_numbers_response: { base_type_name: type.replace(/^\./, ''), extension_number: numbers } };
      }
      case 'list_services':
        return { list_services_response: { service: services.map((name) => ({ name })) } };
      default:
        return { error_response: { error_code: Status.INVALID_ARGUMENT, error_message: 'the request names no question (message_request is empty)' } };
    }
  };
  return {
    ServerReflectionInfo(call: ServerDuplexStream<ReflectionRequest, object>) {
      const sent = new Set<string>();
      call.on('data', (request: ReflectionRequest) => {
        call.write({ valid_host: request.host ?? '', original_request: request, ...answer(request, sent) });
      });
      call.on('end', () => call.end());
      // A client that goes away mid-stream: nothing to clean up but the listeners.
      call.on('error', () => undefined);
    },
  };
}
