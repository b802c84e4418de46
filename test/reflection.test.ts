/**
 * Server reflection serves protoc's FileDescriptorProtos (buf-built
 * build/tenantd.binpb, byte for byte): a Python client with the standard
 * descriptor_pool builds every stub from reflection alone and calls each
 * service; every symbol and every dependency can be asked for by name.
 * On 011b252 (@grpc/reflection over proto-loader) the pool refused the files:
 * no dependencies listed, map entries named `Labels` instead of `LabelsEntry`.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { descriptorSetBytes, fileDescriptors, packageDefinition } from '../src/protos.ts';
import { splitDescriptorSet } from '../src/grpc/reflectionService.ts';
import { pythonGrpcMissing, runPython } from './support/python.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const SCRIPT = fileURLToPath(new URL('./fixtures/reflection_client.py', import.meta.url));
const SERVICES = [
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
  'tenantd.v1.ClusterService',
  'tenantd.v1.EventService',
  'tenantd.v1.SchemaService',
  'tenantd.v1.SqlService',
  'tenantd.v1.TenantService',
];

interface Report {
  fatal?: string;
  services: string[];
  files: string[];
  dependencies: Record<string, string[]>;
  labels_field: { type: string; map_entry: boolean };
  asked: Record<string, number>;
  wrong: unknown[];
  unknown_symbol_error: number;
  calls: Record<string, any>;
}

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(async () => {
  await t?.stop();
});

/** Asks one reflection version a list of questions on one stream. */
async function ask(version: 'v1' | 'v1alpha', requests: object[]): Promise<any[]> {
  const pkg = (grpc.loadPackageDefinition(packageDefinition()) as any).grpc.reflection[version];
  const client = new pkg.ServerReflection(t.client.address, grpc.credentials.createInsecure());
  const call = client.ServerReflectionInfo();
  const answers: any[] = [];
  const done = new Promise<void>((resolve, reject) => {
    call.on('data', (a: any) => answers.push(a));
    call.on('end', resolve);
    call.on('error', reject);
  });
  for (const request of requests) call.write(request);
  call.end();
  await done;
  client.close();
  return answers;
}

describe.skipIf(process.env.TENANTD_SKIP_INTEROP === '1')('reflection for a Python descriptor_pool', () => {
  it('builds stubs from reflection alone and calls a method of every service', async () => {
    const missing = pythonGrpcMissing();
    if (missing) throw new Error(`${missing}\nSet TENANTD_SKIP_INTEROP=1 to skip.`);
    const { report, stderr } = await runPython<Report>(SCRIPT, ['--address', t.client.address, '--tenant-id', 'reflected'], {
      TENANTD_ADMIN_KEY: t.adminKey,
    });
    expect(report.fatal, stderr).toBeUndefined();
    expect(report.services).toEqual(SERVICES);
    expect(report.dependencies['tenantd/v1/tenant_service.proto']).toEqual([
      'google/protobuf/empty.proto',
      'google/protobuf/field_mask.proto',
      'google/protobuf/timestamp.proto',
      'tenantd/v1/common.proto',
    ]);
    expect(report.labels_field).toEqual({ type: 'tenantd.v1.Tenant.LabelsEntry', map_entry: true });
    // Every message, enum, service and method by symbol; every import by file name.
    expect(report.wrong).toEqual([]);
    expect(report.asked.message).toBeGreaterThan(40);
    expect(report.asked.method).toBeGreaterThan(20);
    expect(report.asked.file).toBeGreaterThanOrEqual(9);
    expect(report.unknown_symbol_error).toBe(grpc.status.NOT_FOUND);
    expect(report.calls.TenantService).toEqual({ labels: { via: 'reflection' }, state: 'ACTIVE' });
    expect(report.calls.SqlService).toEqual([{ values: [{ integer_value: '42' }] }]);
    expect(report.calls.EventService).toEqual({ positions: ['1'] });
    expect(report.calls.Health).toEqual({ status: 'SERVING' });
  }, 90_000);
});

describe('reflection serves the descriptor set byte for byte', () => {
  const files = splitDescriptorSet(descriptorSetBytes());
  const names = fileDescriptors().map((f) => f.name);

  for (const version of ['v1', 'v1alpha'] as const) {
    it(`${version}: file_by_filename returns the set's own bytes, each file once per stream`, async () => {
      const answers = await ask(version, names.map((file_by_filename) => ({ file_by_filename })));
      expect(answers).toHaveLength(names.length);
      const served = new Map<string, Buffer>();
      answers.forEach((answer, i) => {
        const protos: Buffer[] = answer.file_descriptor_response.file_descriptor_proto;
        // The asked file comes first; imports already sent on this stream are not repeated.
        expect(Buffer.compare(protos[0]!, files[i]!)).toBe(0);
        for (const bytes of protos) {
          const index = files.findIndex((f) => f.equals(bytes));
          expect(index).toBeGreaterThanOrEqual(0);
          served.set(names[index]!, bytes);
        }
      });
      expect([...served.keys()].sort()).toEqual([...names].sort());
    });
  }

  it('answers unknown names and empty questions with an error, keeping the stream open', async () => {
    const answers = await ask('v1', [
      { file_by_filename: 'nope.proto' },
      { file_containing_symbol: 'tenantd.v1.Nope' },
      { all_extension_numbers_of_type: 'tenantd.v1.Tenant' },
      { host: 'h' },
      { list_services: '' },
    ]);
    expect(answers.map((a) => a.error_response?.error_code ?? null)).toEqual([
      grpc.status.NOT_FOUND,
      grpc.status.NOT_FOUND,
      null,
      grpc.status.INVALID_ARGUMENT,
      null,
    ]);
    expect(answers[2].all_extension_numbers_response).toEqual({ base_type_name: 'tenantd.v1.Tenant', extension_number: [] });
    expect(answers[3].valid_host).toBe('h');
    expect(answers[4].list_services_response.service.map((s: { name: string }) => s.name).sort()).toEqual(SERVICES);
  });

  it('grpc-js serves the same set: every service in it has a definition', () => {
    const def = packageDefinition();
    for (const file of fileDescriptors()) {
      for (const service of file.service ?? []) expect(def[`${file.package}.${service.name}`], service.name).toBeDefined();
    }
    // Map fields round-trip as maps (protobufjs's fromDescriptor alone made them repeated entries).
    const method = (def['tenantd.v1.TenantService'] as any).CreateTenant;
    const bytes = method.requestSerialize({ tenant_id: 'x', tenant: { labels: { a: 'b' } } });
    expect(method.requestDeserialize(bytes).tenant.labels).toEqual({ a: 'b' });
  });
});
