/** Decodes SqlService responses that a shard answered in protobuf bytes, as a gRPC client would see them. */
import { packageDefinition } from '../../src/protos.ts';
import type { EncodedMessage } from '../../src/protocol.ts';

const bytesOf = (m: EncodedMessage) => (typeof m === 'string' ? Buffer.from(m, 'latin1') : Buffer.from(m));

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

export function decodeExecuteResponse(bytes: EncodedMessage): DecodedExecuteResponse {
  return method('Execute').responseDeserialize(bytesOf(bytes)) as DecodedExecuteResponse;
}

export function decodeBatchResponse(bytes: EncodedMessage): { results: DecodedExecuteResponse[] } {
  return method('Batch').responseDeserialize(bytesOf(bytes)) as { results: DecodedExecuteResponse[] };
}

export function decodeQueryResponse(bytes: EncodedMessage): Pick<DecodedExecuteResponse, 'columns' | 'rows'> {
  return method('Query').responseDeserialize(bytesOf(bytes)) as Pick<DecodedExecuteResponse, 'columns' | 'rows'>;
}
