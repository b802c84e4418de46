/**
 * The server's service definitions for grpc-js, through @grpc/proto-loader,
 * from the descriptor set that protoRoot.ts reads (build/tenantd.binpb).
 * Everything protoRoot.ts has is re-exported here.
 */
import * as protoLoader from '@grpc/proto-loader';
import { LOADER_OPTIONS, descriptorJson } from './protoRoot.ts';

export * from './protoRoot.ts';

let definition: protoLoader.PackageDefinition | undefined;

export function packageDefinition(): protoLoader.PackageDefinition {
  definition ??= protoLoader.fromJSON(descriptorJson(), LOADER_OPTIONS);
  return definition;
}
