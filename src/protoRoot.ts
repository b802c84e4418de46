/**
 * The API's types without @grpc/proto-loader, for clients (the typed client,
 * the CLI) that must start fast: the descriptor set that
 * scripts/build-descriptors.mjs compiles from `proto/` with buf
 * (build/tenantd.binpb), as protobufjs reflection objects, and grpc-js
 * service definitions built from them with proto-loader's conversions
 * (LOADER_OPTIONS). Server reflection serves the same set's files byte for
 * byte (grpc/reflectionService.ts), and the server's definitions
 * (protos.ts, through proto-loader) come from the same set, so none of
 * them can differ. Also the google.rpc messages for error details.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import type * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { PACKAGE_ROOT } from './paths.ts';

export const PROTO_DIR = join(PACKAGE_ROOT, 'proto');
export const DESCRIPTOR_SET_PATH = join(PACKAGE_ROOT, 'build', 'tenantd.binpb');
/** descriptorRoot() as protobufjs JSON, with the SHA-256 of the set it was made from. */
export const DESCRIPTOR_JSON_PATH = join(PACKAGE_ROOT, 'build', 'tenantd.json');
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

/** protobufjs's descriptor extension: loaded only when build/tenantd.json must be made anew. */
function descriptors(): { FileDescriptorSet: { decode(bytes: Uint8Array): { file: FileDescriptor[] } } } {
  return createRequire(import.meta.url)('protobufjs/ext/descriptor/index.js');
}

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
  return descriptors().FileDescriptorSet.decode(descriptorSetBytes()).file;
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

let rootJson: protobuf.INamespace | undefined;

/**
 * descriptorRoot() as protobufjs JSON, from build/tenantd.json when that was
 * made from the set as it is (its SHA-256), else made and saved there (a
 * read-only install makes it each time). Reading it takes a few ms where
 * decoding the set and rebuilding its maps takes ~40 ms of a CLI's start.
 */
export function descriptorJson(): protobuf.INamespace {
  if (rootJson) return rootJson;
  const sha256 = createHash('sha256').update(descriptorSetBytes()).digest('hex');
  try {
    const cached = JSON.parse(readFileSync(DESCRIPTOR_JSON_PATH, 'utf8')) as { sha256?: string; root?: protobuf.INamespace };
    if (cached.sha256 === sha256 && cached.root) return (rootJson = cached.root);
  } catch {
    // Absent or unreadable: made below.
  }
  const root = descriptorRoot().toJSON();
  try {
    const temporary = `${DESCRIPTOR_JSON_PATH}.${process.pid}.tmp`;
    writeFileSync(temporary, JSON.stringify({ sha256, root }));
    renameSync(temporary, DESCRIPTOR_JSON_PATH);
  } catch {
    // A read-only install: made again next time.
  }
  return (rootJson = root);
}

let messageRoot: protobuf.Root | undefined;

/** Every type of the API as protobufjs reflection objects, resolved. */
export function apiTypes(): protobuf.Root {
  if (!messageRoot) {
    messageRoot = protobuf.Root.fromJSON(descriptorJson());
    messageRoot.resolveAll();
  }
  return messageRoot;
}

/** What proto-loader's conversions give for LOADER_OPTIONS: int64 as strings, enums as names, defaults, oneof names. */
const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, oneofs: true };

function serializer(type: protobuf.Type): (value: object) => Buffer {
  return (value) => {
    const bytes = type.encode(type.fromObject(value)).finish();
    // protobufjs gives a Buffer under Node; a Uint8Array is wrapped without a copy.
    return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

function deserializer(type: protobuf.Type): (bytes: Buffer) => object {
  return (bytes) => type.toObject(type.decode(bytes), TO_OBJECT);
}

const definitions = new Map<string, grpc.ServiceDefinition>();

/**
 * A service's grpc-js definition (`tenantd.v1.SqlService`), for a client:
 * what proto-loader's packageDefinition() holds for it, without building
 * every other service and message the way proto-loader does at load.
 */
export function serviceDefinition(fullName: string): grpc.ServiceDefinition {
  let definition = definitions.get(fullName);
  if (definition) return definition;
  const service = apiTypes().lookupService(fullName);
  const methods: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const method of service.methodsArray) {
    const request = method.resolvedRequestType!;
    const response = method.resolvedResponseType!;
    methods[method.name] = {
      path: `/${fullName}/${method.name}`,
      requestStream: method.requestStream === true,
      responseStream: method.responseStream === true,
      requestSerialize: serializer(request),
      requestDeserialize: deserializer(request),
      responseSerialize: serializer(response),
      responseDeserialize: deserializer(response),
      originalName: method.name.charAt(0).toLowerCase() + method.name.slice(1),
    };
  }
  definition = methods;
  definitions.set(fullName, definition);
  return definition;
}
