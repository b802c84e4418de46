/**
 * The service definitions for grpc-js, loaded once from the descriptor set
 * that scripts/build-descriptors.mjs compiles from `proto/` with buf
 * (build/tenantd.binpb); server reflection serves the same set's files byte
 * for byte (grpc/reflectionService.ts), so the two can never differ. Also the
 * google.rpc messages as protobufjs types for encoding error details.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import descriptor from 'protobufjs/ext/descriptor/index.js';
import { PACKAGE_ROOT } from './paths.ts';

export const PROTO_DIR = join(PACKAGE_ROOT, 'proto');
export const DESCRIPTOR_SET_PATH = join(PACKAGE_ROOT, 'build', 'tenantd.binpb');
const BUILD_SCRIPT = join(PACKAGE_ROOT, 'scripts', 'build-descriptors.mjs');
const COMPILED = import.meta.url.endsWith('.js');

export const SERVICE_FILES = [
  'tenantd/v1/tenant_service.proto',
  'tenantd/v1/sql_service.proto',
  'tenantd/v1/schema_service.proto',
  'tenantd/v1/event_service.proto',
  'tenantd/v1/cluster_service.proto',
  'grpc/health/v1/health.proto',
];

/**
 * int64 fields travel as decimal strings so that every value in the 64-bit
 * range survives; enums as their names, oneofs with a `kind`-style
 * discriminator so Value cases are cheap to switch on.
 */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

/** The parts of google.protobuf.DescriptorProto this module reads. */
export interface MessageDescriptor {
  name: string;
  field?: { name: string; number: number; type: number; typeName?: string }[];
  nestedType?: MessageDescriptor[];
  enumType?: { name: string; value?: { name: string }[] }[];
  oneofDecl?: { name: string }[];
  extension?: { name: string; number: number; extendee?: string }[];
  options?: { mapEntry?: boolean };
}

export interface FileDescriptor {
  name: string;
  package?: string;
  dependency?: string[];
  messageType?: MessageDescriptor[];
  enumType?: { name: string; value?: { name: string }[] }[];
  service?: { name: string; method?: { name: string }[] }[];
  extension?: { name: string; number: number; extendee?: string }[];
}

const descriptors = descriptor as unknown as {
  FileDescriptorSet: { decode(bytes: Uint8Array): { file: FileDescriptor[] } };
};

function newestProtoSource(dir: string): number {
  let newest = statSync(dir).mtimeMs;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestProtoSource(path));
    else if (entry.name.endsWith('.proto')) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

let setBytes: Buffer | undefined;

/**
 * build/tenantd.binpb, rebuilt first when proto/ changed since (an edited
 * .proto is served at the next start, never a stale API); the check is a
 * dozen stat calls.
 */
export function descriptorSetBytes(): Buffer {
  if (setBytes) return setBytes;
  // Compiled code (dist/) trusts its build: `npm run build` makes the set before compiling, and
  // an image has no buf to remake it with. Sources (tsx, vitest) check that proto/ is not newer.
  const stale = !existsSync(DESCRIPTOR_SET_PATH) || (!COMPILED && statSync(DESCRIPTOR_SET_PATH).mtimeMs <= newestProtoSource(PROTO_DIR));
  if (stale) {
    try {
      execFileSync(process.execPath, [BUILD_SCRIPT], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (error) {
      const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim();
      throw new Error(`${DESCRIPTOR_SET_PATH} is missing or older than proto/ and could not be rebuilt: ${stderr || String(error)}`);
    }
  }
  setBytes = readFileSync(DESCRIPTOR_SET_PATH);
  return setBytes;
}

/** The set's FileDescriptorProtos, decoded, in the set's order. */
export function fileDescriptors(): FileDescriptor[] {
  return descriptors.FileDescriptorSet.decode(descriptorSetBytes()).file;
}

/** Full names (no leading dot) of the synthetic `XxxEntry` messages that protoc makes for map fields. */
function mapEntryNames(files: FileDescriptor[]): Set<string> {
  const names = new Set<string>();
  const visit = (scope: string, message: MessageDescriptor) => {
    const full = `${scope}.${message.name}`;
    if (message.options?.mapEntry) names.add(full);
    for (const nested of message.nestedType ?? []) visit(full, nested);
  };
  for (const file of files) for (const message of file.messageType ?? []) visit(file.package ?? '', message);
  return names;
}

/**
 * protobufjs's Root.fromDescriptor (what proto-loader's
 * loadFileDescriptorSetFromBuffer uses) turns a map field into a repeated
 * `LabelsEntry` message field and flags the parent as a map entry, so
 * `labels: {a: 'b'}` would fail to encode. Put the maps back as MapFields,
 * the way protobufjs builds them from .proto text.
 */
function restoreMapFields(namespace: protobuf.NamespaceBase, entries: Set<string>): void {
  for (const child of namespace.nestedArray) {
    if (child instanceof protobuf.Type) {
      const full = child.fullName.slice(1);
      if (!entries.has(full) && child.options?.map_entry) delete child.options.map_entry;
      for (const field of [...child.fieldsArray]) {
        const entryName = field.type.replace(/^\./, '');
        if (!field.repeated || !entries.has(entryName)) continue;
        const entry = child.lookupType(field.type);
        const map = new protobuf.MapField(field.name, field.id, entry.fields.key!.type, entry.fields.value!.type, field.options);
        child.remove(field);
        child.add(map);
        child.remove(entry);
      }
    }
    if (child instanceof protobuf.Namespace || child instanceof protobuf.Type) restoreMapFields(child, entries);
  }
}

/** The descriptor set as protobufjs reflection objects (unresolved), maps restored. */
export function descriptorRoot(): protobuf.Root {
  const files = fileDescriptors();
  const root = (protobuf.Root as unknown as { fromDescriptor(set: unknown): protobuf.Root }).fromDescriptor({ file: files });
  restoreMapFields(root, mapEntryNames(files));
  return root;
}

let definition: protoLoader.PackageDefinition | undefined;

export function packageDefinition(): protoLoader.PackageDefinition {
  definition ??= protoLoader.fromJSON(descriptorRoot().toJSON(), LOADER_OPTIONS);
  return definition;
}

let rpcRoot: protobuf.Root | undefined;

/** google.rpc.Status and the error detail messages. */
export function rpcTypes(): protobuf.Root {
  if (!rpcRoot) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) =>
      target.startsWith('google/protobuf/') ? target : join(PROTO_DIR, target);
    rpcRoot = root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
    rpcRoot.resolveAll();
  }
  return rpcRoot;
}
