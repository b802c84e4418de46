/**
 * The service definitions, loaded once from `proto/` for grpc-js, and the
 * google.rpc messages as protobufjs types for encoding error details.
 */
import { join } from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { PACKAGE_ROOT } from './paths.ts';

export const PROTO_DIR = join(PACKAGE_ROOT, 'proto');

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

let definition: protoLoader.PackageDefinition | undefined;

export function packageDefinition(): protoLoader.PackageDefinition {
  definition ??= protoLoader.loadSync(SERVICE_FILES, LOADER_OPTIONS);
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
