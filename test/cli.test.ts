/**
 * The operator CLI (`tenantd <command>`) as a child process against a real
 * server: canonical proto3 JSON answers, backups to a file and back, strict
 * flags, one-line errors and exit codes.
 */
import { spawn } from 'node:child_process';
import { existsSync, rmSync, statSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDataDir, startTestServer, type TestServer } from './support/server.ts';

const BIN = fileURLToPath(new URL('../bin/tenantd.js', import.meta.url));
let t: TestServer;
const files = freshDataDir();

beforeAll(async () => {
  t = await startTestServer({ shards: 2 });
});
afterAll(async () => {
  await t.stop();
  rmSync(files, { recursive: true, force: true });
});

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Peak RSS of the CLI process in KiB (GNU time), when `measure` was asked. */
  maxRssKiB?: number;
}

/** Runs the CLI; async, because the server answering it lives in this process. */
function tenantd(args: string[], options: { env?: Record<string, string>; address?: boolean; measure?: boolean; tty?: boolean; server?: TestServer } = {}): Promise<Ran> {
  const server = options.server ?? t;
  const env = options.env ?? { TENANTD_ADMIN_KEY: server.adminKey };
  const argv = [BIN, ...args, ...(options.address === false ? [] : ['--address', `127.0.0.1:${server.server.port}`])];
  const quoted = (arg: string) => `'${arg.replaceAll("'", `'\\''`)}'`;
  // tty: under util-linux `script`, on a pseudo-terminal (stdout and stderr both arrive as stdout).
  const [command, commandArgs] = options.measure
    ? ['/usr/bin/time', ['-f', 'maxrss=%M', process.execPath, ...argv]]
    : options.tty
      ? ['/usr/bin/script', ['-qfec', [process.execPath, ...argv].map(quoted).join(' '), '/dev/null']]
      : [process.execPath, argv];
  const child = spawn(command, commandArgs, { env: { ...process.env, TENANTD_ADMIN_KEY: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) =>
    child.on('exit', (code) => {
      const rss = /maxrss=(\d+)\n?$/.exec(stderr);
      if (rss) stderr = stderr.slice(0, rss.index);
      resolve({ code, stdout, stderr, ...(rss ? { maxRssKiB: Number(rss[1]) } : {}) });
    }),
  );
}

/** The JSON a successful run printed; fails with its stderr otherwise. */
function json(ran: Ran): any {
  expect(ran.code, ran.stderr).toBe(0);
  return JSON.parse(ran.stdout);
}

/** An error is one line: `CODE REASON: message`. */
function expectOneLineError(ran: Ran, code: number, prefix: string): void {
  expect(ran.code, ran.stderr).toBe(code);
  expect(ran.stderr.trimEnd().split('\n'), ran.stderr).toHaveLength(1);
  expect(ran.stderr).toMatch(new RegExp(`^${prefix}`));
  expect(ran.stderr).not.toMatch(/\n\s+at /);
}

// Each CLI run is a fresh Node process (through tsx when dist/ is not current): seconds apiece on a loaded host.
/** Rows of 1 MiB in the backup the streaming restore test makes. */
const BIG_BLOBS = 144;

describe('tenantd CLI', { timeout: 400_000 }, () => {
  it('creates a tenant, runs SQL for it, and backs it up to a file and back as another tenant, in canonical proto3 JSON', async () => {
    const created = await tenantd(['tenants', 'create', 'cli-a', '--plan', 'pro', '--display-name', 'From the CLI']);
    expect(created.code, created.stderr).toBe(0);
    const response = JSON.parse(created.stdout);
    expect(response.tenant).toMatchObject({ name: 'tenants/cli-a', tenantId: 'cli-a', plan: 'pro', displayName: 'From the CLI', state: 'ACTIVE' });
    expect(response.apiKey.key).toMatch(/^tdk_/);
    // What grpcurl prints: RFC 3339 timestamps, int64 as strings, no nulls, no oneof `kind`, no defaults.
    expect(response.tenant.createTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$/);
    expect(response.tenant.effectiveQuotas.requestsPerSecond).toBe('2000');
    expect(created.stdout).not.toMatch(/"kind"|null|"[a-z]+_[a-z_]*":/);
    expect(response.tenant).not.toHaveProperty('schemaVersion'); // 0 is the default: left out

    // The admin key acts for the tenant through x-tenant-id.
    expect((await tenantd(['sql', 'cli-a', 'CREATE TABLE t (x INTEGER, b BLOB)'])).code).toBe(0);
    expect((await tenantd(['sql', 'cli-a', "INSERT INTO t VALUES (41, x'00ff'), (42, NULL)"])).code).toBe(0);

    const file = join(files, 'cli-a.sqlite');
    const backup = await tenantd(['backup', 'cli-a', file]);
    expect(backup.code, backup.stderr).toBe(0);
    expect(backup.stderr).toBe(''); // piped: no progress bar
    const saved = JSON.parse(backup.stdout);
    expect(saved.bytes).toBe(statSync(file).size);
    expect(saved.sha256).toMatch(/^[0-9a-f]{64}$/);

    // On a terminal the same backup draws a progress line (bytes, percent, rate, ETA), redrawn in place.
    const onTty = await tenantd(['backup', 'cli-a', join(files, 'cli-a-tty.sqlite')], { tty: true });
    expect(onTty.code, onTty.stdout).toBe(0);
    expect(onTty.stdout).toContain('\r\x1b[2Kbackup cli-a');
    expect(onTty.stdout).toMatch(/100% \S+ \S+ of \S+ \S+ {2}\S+ \S+\/s {2}ETA /);

    const restored = await tenantd(['restore', 'cli-b', file, '--plan', 'pro']);
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.stderr).toBe('');
    expect(JSON.parse(restored.stdout)).toMatchObject({ name: 'tenants/cli-b', state: 'ACTIVE' });
    const rows = json(await tenantd(['sql', 'cli-b', 'SELECT sum(x), min(b), max(b) FROM t']));
    expect(rows.rows[0].values).toEqual([{ integerValue: '83' }, { blobValue: 'AP8=' }, { blobValue: 'AP8=' }]);
    const nulls = json(await tenantd(['sql', 'cli-b', 'SELECT NULL, 0, 0.0']));
    // A oneof member that is set is printed even when it holds its default value.
    expect(nulls.rows[0].values).toEqual([{ nullValue: null }, { integerValue: '0' }, { realValue: 0 }]);

    const check = await tenantd(['maintain', '-', 'integrity_check']);
    expect(check.code).toBe(0);
    const lines = check.stdout.trim().split('\n').map((line) => JSON.parse(line));
    expect(lines.map((l) => l.tenant).sort()).toEqual(['tenants/cli-a', 'tenants/cli-b']);
    expect(lines.every((l) => l.ok)).toBe(true);
  });

  it('prints one-line errors `CODE REASON: message` and exits 1 on a failed call, 2 on bad usage or no key', async () => {
    const [missing, badId, usage, noKey] = await Promise.all([
      tenantd(['tenants', 'get', 'nobody']),
      tenantd(['tenants', 'create', 'Not An Id']),
      tenantd(['tenants', 'frobnicate', 'x']),
      tenantd(['tenants', 'list', '--admin-key-file', join(files, 'absent.key')], { env: {} }),
    ]);
    expectOneLineError(missing, 1, 'NOT_FOUND TENANT_NOT_FOUND: ');
    expectOneLineError(badId, 1, 'INVALID_ARGUMENT \\w+: ');
    expect(badId.stderr).toContain('(tenant_id: ');
    expectOneLineError(usage, 2, 'tenantd tenants: unknown tenants subcommand "frobnicate"');
    expectOneLineError(noKey, 2, 'tenantd tenants: no admin key');

    // A backup that fails leaves no file behind to be mistaken for one.
    const failedBackup = join(files, 'nobody.sqlite');
    const backup = await tenantd(['backup', 'nobody', failedBackup]);
    expectOneLineError(backup, 1, 'NOT_FOUND TENANT_NOT_FOUND');
    expect(existsSync(failedBackup)).toBe(false);
    expect(existsSync(`${failedBackup}.partial`)).toBe(false);
  });

  it('refuses a backup to an unwritable path with one line, not a stack trace', async () => {
    await t.createTenant('cli-unwritable');
    const notADir = join(files, 'plain-file');
    writeFileSync(notADir, 'x');
    const ran = await tenantd(['backup', 'cli-unwritable', join(notADir, 'backup.sqlite')]);
    expectOneLineError(ran, 1, 'ERROR ENOTDIR: cannot write ');
    const exists = await tenantd(['backup', 'cli-unwritable', notADir]);
    expectOneLineError(exists, 1, 'ERROR EEXIST: ');
  });

  it('does not force a delete on --force=false, and refuses unknown flags instead of ignoring them', async () => {
    await t.createTenant('cli-keep');
    const notForced = await tenantd(['tenants', 'delete', 'cli-keep', '--force=false']);
    expectOneLineError(notForced, 1, 'FAILED_PRECONDITION ');
    expect((await tenantd(['tenants', 'get', 'cli-keep'])).code).toBe(0);

    const typo = await tenantd(['tenants', 'create', 'cli-typo', '--plna', 'pro']);
    expectOneLineError(typo, 2, 'tenantd tenants: unknown flag --plna');
    expectOneLineError(await tenantd(['tenants', 'delete', 'cli-keep', '--force=maybe']), 2, 'tenantd tenants: --force: expected true or false');
    expect((await tenantd(['tenants', 'get', 'cli-typo'])).code).toBe(1);

    const forced = await tenantd(['tenants', 'delete', 'cli-keep', '--force=true']);
    expect(forced.code, forced.stderr).toBe(0);
    expect((await tenantd(['tenants', 'get', 'cli-keep'])).code).toBe(1);
  });

  it('takes global flags before the command, and --help anywhere without eating the next word', async () => {
    const before = await tenantd(['--address', `127.0.0.1:${t.server.port}`, '-o', 'json', 'tenants', 'create', 'cli-global'], { address: false });
    expect(before.code, before.stderr).toBe(0);
    expect(JSON.parse(before.stdout).tenant.tenantId).toBe('cli-global');
    // The address from the environment, as the admin key can be; a flag wins over it.
    const fromEnv = await tenantd(['tenants', 'get', 'cli-global', '-o', 'json'], { address: false, env: { TENANTD_ADMIN_KEY: t.adminKey, TENANTD_ADDRESS: `127.0.0.1:${t.server.port}` } });
    expect(json(fromEnv).tenantId).toBe('cli-global');
    const flagWins = await tenantd(['tenants', 'get', 'cli-global', '--address', `127.0.0.1:${t.server.port}`], { address: false, env: { TENANTD_ADMIN_KEY: t.adminKey, TENANTD_ADDRESS: '127.0.0.1:1' } });
    expect(flagWins.code, flagWins.stderr).toBe(0);

    const help = await tenantd(['tenants', 'create', '--help', 'cli-not-created']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('usage: tenantd tenants create <tenant>');
    expect((await tenantd(['tenants', 'get', 'cli-not-created'])).code).toBe(1);

    // Every command answers --help with its usage, exit 0, and no call made (no key needed).
    const commands = [
      ['tenants', 'list'], ['tenants', 'get'], ['tenants', 'update'], ['tenants', 'suspend'], ['tenants', 'activate'], ['tenants', 'delete'],
      ['keys', 'create'], ['keys', 'list'], ['keys', 'revoke'], ['usage'], ['sql'], ['backup'], ['restore'], ['maintain'],
      ['migrations', 'apply'], ['migrations', 'get'], ['migrations', 'list'], ['migrations', 'retry'], ['tenants'], ['keys'], ['migrations'], [],
    ];
    const helps = await Promise.all(commands.map((c) => tenantd([...c, '--help'], { env: {}, address: false })));
    helps.forEach((ran, i) => {
      expect(ran.code, `${commands[i]!.join(' ')} --help: ${ran.stderr}`).toBe(0);
      expect(ran.stdout).toMatch(/usage:/);
      expect(ran.stdout).toContain('--tls-ca');
    });
  });

  it('revokes a key, and lists keys and tenants as tables', async () => {
    const created = JSON.parse((await tenantd(['tenants', 'create', 'cli-keys'])).stdout);
    const keyId = created.apiKey.keyId as string;
    const revoked = await tenantd(['keys', 'revoke', 'cli-keys', keyId]);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(JSON.parse(revoked.stdout).revokeTime).toMatch(/Z$/);
    const refused = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: created.apiKey.key });
    expect(refused.code).toBe(16); // UNAUTHENTICATED: the revoked key stopped working

    const table = await tenantd(['keys', 'list', 'cli-keys', '--show-revoked', '--output', 'table']);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout.split('\n')[0]).toMatch(/^KEYID\s+ROLE\s+DISPLAYNAME\s+CREATETIME\s+REVOKETIME$/);
    expect(table.stdout).toContain(keyId);

    const tenants = await tenantd(['tenants', 'list', '-o', 'table']);
    expect(tenants.stdout).toMatch(/^TENANTID\s+PLAN\s+STATE/);
    expect(tenants.stdout).toMatch(/\ncli-keys\s+free\s+ACTIVE/);
  });

  it('watches usage: one JSON line per interval until the deadline or Ctrl-C', async () => {
    await t.createTenant('cli-watch');
    // --watch streams one JSON line per interval until stopped; here the deadline stops it.
    const watch = await tenantd(['usage', 'cli-watch', '--watch', '--interval-ms', '200', '--timeout-ms', '3000']);
    const snapshots = watch.stdout.trim().split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
    expect(snapshots.length, watch.stderr).toBeGreaterThanOrEqual(2);
    expect(snapshots[0].name).toBe('tenants/cli-watch');
    expectOneLineError(watch, 1, 'DEADLINE_EXCEEDED');
  });

  it('applies, gets and lists migrations, and exits 1 when one FAILED', async () => {
    const applied = await tenantd(['migrations', 'apply', 'cli-m1', '--sql', 'CREATE TABLE cli_m1 (x)']);
    expect(applied.code, applied.stderr).toBe(0);
    expect(JSON.parse(applied.stdout)).toMatchObject({ migrationId: 'cli-m1', state: 'SUCCEEDED' });
    expect(JSON.parse((await tenantd(['migrations', 'get', 'cli-m1'])).stdout).state).toBe('SUCCEEDED');
    const listed = (await tenantd(['migrations', 'list'])).stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(listed.map((m) => m.migrationId)).toContain('cli-m1');
    const sqlFile = join(files, 'm2.sql');
    writeFileSync(sqlFile, 'CREATE TABLE cli_m2 (y)');
    const fromFile = await tenantd(['migrations', 'apply', 'cli-m2', sqlFile]);
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expectOneLineError(await tenantd(['migrations', 'apply', 'cli-m3']), 2, 'tenantd migrations: give the migration as a file or as --sql');
  });

  it('restores by streaming the file: a 144 MiB backup does not take 144 MiB of memory', async () => {
    const big = join(files, 'big.sqlite');
    const db = new Database(big);
    db.exec('PRAGMA journal_mode = DELETE; CREATE TABLE blobs (b BLOB)');
    const insert = db.prepare('INSERT INTO blobs VALUES (randomblob(1048576))');
    for (let i = 0; i < BIG_BLOBS; i++) insert.run();
    db.close();
    const size = statSync(big).size;
    expect(size).toBeGreaterThan(BIG_BLOBS * 1024 * 1024);

    const baseline = await tenantd(['tenants', 'get', 'cli-a'], { measure: true });
    const restored = await tenantd(['restore', 'cli-big', big, '--plan', 'pro'], { measure: true });
    expect(restored.code, restored.stderr).toBe(0);
    const grewKiB = restored.maxRssKiB! - baseline.maxRssKiB!;
    // Reading the whole file in (the old CLI) grew it by the file's size at least; streaming
    // leaves what the garbage collector has not yet taken back: V8 collects after some tens of
    // MiB of buffers (about 30 MiB on Node 20, 48 MiB on Node 24, measured), whatever the
    // file's size, so the file is three times that.
    expect(grewKiB, `baseline ${baseline.maxRssKiB} KiB, restore ${restored.maxRssKiB} KiB`).toBeLessThan((size / 1024) * 0.5);
    const count = JSON.parse((await tenantd(['sql', 'cli-big', 'SELECT count(*) FROM blobs'])).stdout);
    expect(count.rows[0].values[0].integerValue).toBe(String(BIG_BLOBS));
  });
});

describe('tenantd maintain -', { timeout: 240_000 }, () => {
  it('exits 1 when any tenant failed, and says which', async () => {
    const dataDir = freshDataDir();
    let server = await startTestServer({ dataDir }, { keepDataDir: true });
    let running = true;
    try {
      const good = await server.createTenant('maint-good');
      const bad = await server.createTenant('maint-bad');
      for (const key of [good, bad]) {
        await server.sql(key, 'CREATE TABLE t (x TEXT)');
        await server.sql(key, 'CREATE INDEX t_x ON t (x)');
        await server.sql(key, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO t SELECT printf('%0100d', i) FROM n");
      }
      await server.stop();
      running = false;
      // Scribbles over pages past the header of one tenant's database while no server has it open.
      const file = join(dataDir, 'tenants', 'maint-bad', 'db.sqlite');
      const fd = openSync(file, 'r+');
      const size = statSync(file).size;
      for (let offset = 8192; offset < size; offset += 8192) writeSync(fd, Buffer.alloc(512, 0x5a), 0, 512, offset + 100);
      closeSync(fd);
      server = await startTestServer({ dataDir }, { keepDataDir: true });
      running = true;
      const ran = await tenantd(['maintain', '-', 'INTEGRITY_CHECK'], { server });
      expect(ran.code, ran.stderr).toBe(1);
      const lines = ran.stdout.trim().split('\n').map((l) => JSON.parse(l));
      expect(lines.find((l) => l.tenant === 'tenants/maint-good')).toMatchObject({ ok: true });
      expect(lines.find((l) => l.tenant === 'tenants/maint-bad')?.ok).toBeUndefined(); // false: the default, left out
    } finally {
      if (running) await server.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
