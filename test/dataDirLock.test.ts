import { rmSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { DataDirLockedError, lockDataDir } from '../src/dataDirLock.ts';
import { serveChild, serveChildFailing, type ChildServer } from './support/childServer.ts';
import { freshDataDir, startTestServer, TestClient } from './support/server.ts';

const dirs: string[] = [];
const children: ChildServer[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) {
    c.child.kill('SIGKILL');
    await c.exited;
  }
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('one server per data directory', () => {
  it('a second server on the same directory exits 2 naming the directory and the holding pid', async () => {
    const dataDir = freshDataDir();
    dirs.push(dataDir);
    const first = await serveChild(dataDir);
    children.push(first);
    const second = await serveChildFailing(dataDir);
    expect(second.code).toBe(2);
    expect(second.output).toContain(dataDir);
    expect(second.output).toContain(`pid ${first.child.pid}`);
    // The first one was never disturbed.
    const client = new TestClient(`127.0.0.1:${first.port}`);
    try {
      const created = await client.call('TenantService', 'CreateTenant', { tenant_id: 'still-mine' }, { key: first.adminKey });
      expect(created.api_key.key).toBeTruthy();
    } finally {
      client.close();
    }
  }, 240_000);

  it('a SIGKILLed owner leaves no stale lock: the next server starts and has its tenants', async () => {
    const dataDir = freshDataDir();
    dirs.push(dataDir);
    const first = await serveChild(dataDir);
    const client = new TestClient(`127.0.0.1:${first.port}`);
    await client.call('TenantService', 'CreateTenant', { tenant_id: 'survivor' }, { key: first.adminKey });
    client.close();
    first.child.kill('SIGKILL');
    expect(await first.exited).toBe('SIGKILL');
    const next = await serveChild(dataDir);
    children.push(next);
    const again = new TestClient(`127.0.0.1:${next.port}`);
    try {
      const tenant = await again.call('TenantService', 'GetTenant', { name: 'tenants/survivor' }, { key: next.adminKey });
      expect(tenant.name).toBe('tenants/survivor');
    } finally {
      again.close();
    }
  }, 240_000);

  it('refuses a second server in the same process, and gives the directory up at shutdown', async () => {
    const first = await startTestServer({}, { keepDataDir: true });
    dirs.push(first.dataDir);
    await expect(startTestServer({ dataDir: first.dataDir }, { keepDataDir: true })).rejects.toBeInstanceOf(DataDirLockedError);
    expect(() => lockDataDir(first.dataDir)).toThrow(`pid ${process.pid}`);
    await first.stop();
    const second = await startTestServer({ dataDir: first.dataDir }, { keepDataDir: true });
    await second.stop();
  });
});
