/** Decodes SqlService responses that a shard answered in protobuf bytes, as a gRPC client would see them. */
import { packageDefinition } from '../../src/protos.ts';

type Method = { responseDeserialize(bytes: Buffer): unknown };

function method(name: 'Execute' | 'Batch' | 'Query'): Method {
  return (packageDefinition()['tenantd.v1.SqlService'] as unknown as Record<string, Method>)[name]!;
}

export interface DecodedExecuteResponse {
  columns: { name: string; decl_type: string }[];
  rows: { values: Record<string, unknown>[] }[];
  rows_affected: string;
  last_insert_rowid: string;
}

export function decodeExecuteResponse(bytes: Uint8Array): DecodedExecuteResponse {
  return method('Execute').responseDeserialize(Buffer.from(bytes)) as DecodedExecuteResponse;
}

export function decodeBatchResponse(bytes: Uint8Array): { results: DecodedExecuteResponse[] } {
  return method('Batch').responseDeserialize(Buffer.from(bytes)) as { results: DecodedExecuteResponse[] };
}

export function decodeQueryResponse(bytes: Uint8Array): Pick<DecodedExecuteResponse, 'columns' | 'rows'> {
  return method('Query').responseDeserialize(Buffer.from(bytes)) as Pick<DecodedExecuteResponse, 'columns' | 'rows'>;
}
