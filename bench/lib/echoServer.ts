/**
 * Child process: a bare grpc-js server for the baseline. It serves
 * tenantd.v1.SqlService/Execute from tenantd's own package definition, so
 * requests and responses are the same ExecuteRequest/ExecuteResponse messages
 * with the same (de)serializers, and answers each call at once with the
 * response a point read on `accounts` gets from tenantd: three columns, one
 * row. No auth, no routing, no worker hop: what grpc-js alone costs.
 */
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../../src/protos.ts';
import { failToParent, serveParent } from './child.ts';

interface Value {
  kind?: string;
  integer_value?: string;
}

const COLUMNS = [
  { name: 'id', decl_type: 'INTEGER' },
  { name: 'name', decl_type: 'TEXT' },
  { name: 'balance', decl_type: 'INTEGER' },
];

try {
  const loaded = grpc.loadPackageDefinition(packageDefinition()) as unknown as {
    tenantd: { v1: { SqlService: { service: grpc.ServiceDefinition } } };
  };
  const server = new grpc.Server();
  server.addService(loaded.tenantd.v1.SqlService.service, {
    Execute: (call: grpc.ServerUnaryCall<{ params: Value[] }, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      const id = call.request.params[0]?.integer_value ?? '0';
      callback(null, {
        columns: COLUMNS,
        rows: [{ values: [{ integer_value: id }, { text_value: `account-${id}` }, { integer_value: String(Number(id) * 100) }] }],
        rows_affected: '0',
        last_insert_rowid: '0',
      });
    },
    Batch: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback({ code: grpc.status.UNIMPLEMENTED }),
    Query: (call: grpc.ServerWritableStream<unknown, unknown>) => call.emit('error', { code: grpc.status.UNIMPLEMENTED }),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  serveParent({ type: 'ready', port }, () => new Promise<void>((done) => server.tryShutdown(() => done())));
} catch (error) {
  failToParent(error);
}
