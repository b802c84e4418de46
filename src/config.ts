/**
 * The server's options: one validated, fully defaulted type. Flags win over
 * the environment (`TENANTD_*`), the environment over the YAML file.
 */
import { availableParallelism, hostname } from 'node:os';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { readTlsMaterial } from './tls/certificates.ts';

export type SyncMode = 'full' | 'normal';
/** How --sync full's commits reach the disk (Config.syncFlush). */
export type SyncFlushMode = 'shared' | 'per-commit';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

/** Bytes of Query results that may wait for slow clients (src/grpc/queryOutlet.ts). */
/** Tenant calls that may wait for the shards (routing/shardQueueBudget.ts). */
export interface ShardQueueLimits {
  /** Calls queued or running in one shard. */
  perShardCalls: number;
  /** Their request bytes (SQL, parameters, events) in one shard. */
  perShardBytes: number;
  /** Calls queued or running in every shard together. */
  totalCalls: number;
  totalBytes: number;
}

/** The documented defaults (README, "Memory and queue budgets"). */
export const DEFAULT_SHARD_QUEUE_LIMITS: ShardQueueLimits = {
  perShardCalls: 10_000,
  perShardBytes: 64 * 1024 * 1024,
  totalCalls: 50_000,
  totalBytes: 256 * 1024 * 1024,
};

export interface UnreadLimits {
  /** For one tenant's calls together. */
  perTenant: number;
  /** For every tenant's together. */
  total: number;
}

/** Quota values as stored and enforced: -1 is unlimited, never 0 once resolved. */
export interface QuotaValues {
  requestsPerSecond: number;
  writeBytesPerSecond: number;
  concurrentRequests: number;
  storageBytes: number;
  queryTimeoutMs: number;
  eventRetentionHours: number;
  /**
   * Milliseconds of its shard thread's time a tenant may use per second, on
   * average, with bursts of up to one second's worth: what keeps one
   * tenant's heavy queries from taking the shard from its neighbours.
   */
  shardMsPerSecond: number;
  /** The longest an interactive transaction may stay open, from begin to its end. */
  transactionTimeoutMs: number;
  /** Interactive transactions open at once. */
  concurrentTransactions: number;
}

export const QUOTA_FIELDS = [
  'requestsPerSecond',
  'writeBytesPerSecond',
  'concurrentRequests',
  'storageBytes',
  'queryTimeoutMs',
  'eventRetentionHours',
  'shardMsPerSecond',
  'transactionTimeoutMs',
  'concurrentTransactions',
] as const satisfies readonly (keyof QuotaValues)[];

export type QuotaField = (typeof QUOTA_FIELDS)[number];

/** `requestsPerSecond` -> `requests_per_second`, the name used on the wire and in YAML. */
export function snakeCase(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** A node's part in a cluster; `etcd` empty: a single node, no cluster. */
export interface ClusterConfig {
  /** etcd endpoints (`http://host:2379`), where placement and membership live. */
  etcd: string[];
  /** This node's id in placement: stable across restarts (it owns slots under it). */
  nodeId: string;
  /** Where clients, the proxy and other nodes reach this node's gRPC port; null: 127.0.0.1 and the bound port. */
  advertise: string | null;
  /** Where other nodes send it moved tenants; null: `advertise`. */
  internalAdvertise: string | null;
  /** Seconds a node's lease lives without renewal; it fences itself after 2/3 of it. */
  leaseTtlSeconds: number;
  /** How long a move's source keeps its old copy (calls for it are forwarded meanwhile). */
  moveGraceMs: number;
  /** How long a copy of a tenant that another live node owns stays before it is set aside under orphans/ (cluster/orphans.ts). */
  orphanGraceMs: number;
  /**
   * CA file the nodes trust for each other's TLS; null: --tls-client-ca. Used
   * only when the node serves TLS (--tls-cert): node-to-node calls then use
   * TLS too, with the node's own certificate as the client certificate.
   */
  tlsCa: string | null;
}

export interface Config {
  listen: string;
  dataDir: string;
  shards: number;
  sync: SyncMode;
  /**
   * Under --sync full, how commits reach the disk: `shared` (Linux), one sync for all the commits a shard
   * makes before it answers (an fsync of the WAL when they went to one tenant, else a syncfs of the data
   * directory's filesystem); `per-commit`, SQLite's fsync of the tenant's WAL at each commit. Either way
   * no write is acknowledged before it is on disk.
   */
  syncFlush: SyncFlushMode;
  maxOpenDbs: number;
  /** null when metrics and the HTTP health endpoints are disabled (`--metrics-listen off`). */
  metricsListen: string | null;
  logLevel: LogLevel;
  /** Tenants and keys to create at start, if they do not exist yet. */
  tenantsFile: string | null;
  /**
   * A file holding the admin key to use (e.g. one secret shared by every node
   * of a cluster); null: `<data-dir>/admin.key`, created on first start.
   */
  adminKeyFile: string | null;
  plans: Record<string, QuotaValues>;
  defaultPlan: string;
  /** How long shutdown waits for calls in flight before cancelling them. */
  drainTimeoutMs: number;
  /** No statement runs longer, whatever its plan says; a query_timeout_ms of -1 means up to this. */
  maxQueryTimeoutMs: number;
  /** A migration's time limit, per tenant and step, and for its validation (guard deadline). */
  migrationTimeoutMs: number;
  /** Let queued writes of one tenant share a commit (each in its own savepoint). */
  groupCommit: boolean;
  /** Lets tests make a shard worker die on purpose. Not settable from flags, env or file. */
  faultInjection: boolean;
  /** How often each shard removes expired events of its open tenants. Not settable from flags, env or file. */
  eventSweepMs: number;
  /** Bytes of Query results that may wait for slow clients, per tenant and in all (queryOutlet.ts). Not settable from flags, env or file. */
  queryUnreadLimits: UnreadLimits;
  /** Tenant calls queued for the shards, per shard and in all (routing/shardQueueBudget.ts). Not settable from flags, env or file. */
  shardQueueLimits: ShardQueueLimits;
  /** How long a call's request may take to arrive in full (grpc/requestDeadline.ts). Not settable from flags, env or file. */
  requestReadTimeoutMs: number;
  /** false (`--telemetry off`): no OpenTelemetry SDK at all, no `/metrics`, no spans. */
  telemetry: boolean;
  /** Adds a `tenantd.tenant_id` attribute to the call counter: one series per tenant, so opt-in. */
  metricsPerTenant: boolean;
  cluster: ClusterConfig;
  /** PEM certificate chain and key: gRPC over TLS; null: plaintext. Reloaded on change and SIGHUP (tls/certificates.ts). */
  tlsCert: string | null;
  tlsKey: string | null;
  /** PEM CA: mutual TLS, clients must present a certificate it signed. Needs tlsCert. */
  tlsClientCa: string | null;
  /** Serve /metrics, /healthz and /readyz over HTTPS with the same certificate. */
  metricsTls: boolean;
  /** Longest wait for a transaction's next request before it is rolled back (docs/transactions.md). */
  transactionIdleMs: number;
  /** How long a request_id's response is kept for retries. */
  idempotencyWindowHours: number;
}

const MIB = 1024 * 1024;

export const DEFAULT_PLANS: Record<string, QuotaValues> = {
  free: {
    requestsPerSecond: 100,
    writeBytesPerSecond: MIB,
    concurrentRequests: 16,
    storageBytes: 100 * MIB,
    queryTimeoutMs: 5_000,
    eventRetentionHours: 24 * 7,
    shardMsPerSecond: 200,
    transactionTimeoutMs: 30_000,
    concurrentTransactions: 4,
  },
  pro: {
    requestsPerSecond: 2_000,
    writeBytesPerSecond: 16 * MIB,
    concurrentRequests: 128,
    storageBytes: 10 * 1024 * MIB,
    queryTimeoutMs: 10_000,
    eventRetentionHours: 24 * 30,
    shardMsPerSecond: 500,
    transactionTimeoutMs: 60_000,
    concurrentTransactions: 16,
  },
  enterprise: {
    requestsPerSecond: -1,
    writeBytesPerSecond: -1,
    concurrentRequests: 1_024,
    storageBytes: -1,
    queryTimeoutMs: 30_000,
    eventRetentionHours: -1,
    shardMsPerSecond: 1_000,
    transactionTimeoutMs: 300_000,
    concurrentTransactions: 64,
  },
};

export function defaultConfig(): Config {
  return {
    listen: '127.0.0.1:7070',
    dataDir: './data',
    shards: Math.max(1, availableParallelism()),
    sync: 'full',
    // Not shared by default: one tenant's heavy writes would slow every neighbour's commits (README).
    syncFlush: 'per-commit',
    // About 215 KiB of SQLite memory each (page cache, lookaside, statements): 256 are ~55 MB.
    maxOpenDbs: 256,
    metricsListen: '127.0.0.1:9464',
    logLevel: 'info',
    tenantsFile: null,
    adminKeyFile: null,
    plans: structuredClone(DEFAULT_PLANS),
    defaultPlan: 'free',
    drainTimeoutMs: 10_000,
    maxQueryTimeoutMs: 60_000,
    migrationTimeoutMs: 60_000,
    groupCommit: true,
    faultInjection: false,
    eventSweepMs: 60_000,
    queryUnreadLimits: { perTenant: 256 * 1024 * 1024, total: 1024 * 1024 * 1024 },
    shardQueueLimits: { ...DEFAULT_SHARD_QUEUE_LIMITS },
    // A 16 MiB request at 1 MB/s takes 16 s; a body that stops for longer is an attack or a dead client.
    requestReadTimeoutMs: 30_000,
    telemetry: true,
    metricsPerTenant: false,
    cluster: { etcd: [], nodeId: hostname(), advertise: null, internalAdvertise: null, leaseTtlSeconds: 10, moveGraceMs: 30_000, orphanGraceMs: 600_000, tlsCa: null },
    tlsCert: null,
    tlsKey: null,
    tlsClientCa: null,
    metricsTls: false,
    transactionIdleMs: 5_000,
    idempotencyWindowHours: 24,
  };
}

/** A bad option: the message names the option and the value it got. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Source = 'flag' | 'environment' | 'config file';

interface ScalarOption {
  flag: string;
  env: string;
  yaml: string;
  apply(config: Config, raw: unknown, where: string): void;
}

function describe(where: string, raw: unknown): string {
  return `${where}: expected ${JSON.stringify(raw)} to be`;
}

function asInteger(raw: unknown, where: string, min: number, max: number): number {
  const value = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${describe(where, raw)} an integer from ${min} to ${max}`);
  }
  return value;
}

function asString(raw: unknown, where: string): string {
  if (typeof raw !== 'string' || raw === '') throw new ConfigError(`${describe(where, raw)} a non-empty string`);
  return raw;
}

function asListenAddress(raw: unknown, where: string): string {
  const value = asString(raw, where);
  const match = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(value);
  if (!match || Number(match[2]) > 65535) {
    throw new ConfigError(`${describe(where, raw)} host:port, e.g. 127.0.0.1:7070 (port 0 picks a free one)`);
  }
  return value;
}

/** on/off switches: `on`, `off`, `true`, `false`, or a YAML boolean. */
function asSwitch(raw: unknown, where: string): boolean {
  if (raw === true || raw === 'on' || raw === 'true') return true;
  if (raw === false || raw === 'off' || raw === 'false') return false;
  throw new ConfigError(`${describe(where, raw)} on or off`);
}

function asEnum<T extends string>(raw: unknown, where: string, allowed: readonly T[]): T {
  if (typeof raw !== 'string' || !(allowed as readonly string[]).includes(raw)) {
    throw new ConfigError(`${describe(where, raw)} one of ${allowed.join(', ')}`);
  }
  return raw as T;
}

/** etcd endpoints, comma-separated: `http://host:2379,http://host2:2379`. */
function asEndpoints(raw: unknown, where: string): string[] {
  const list = (Array.isArray(raw) ? raw : asString(raw, where).split(',')).map((e) => String(e).trim()).filter((e) => e !== '');
  for (const endpoint of list) {
    if (!/^https?:\/\/[A-Za-z0-9.[\]:-]+:\d{1,5}$/.test(endpoint)) {
      throw new ConfigError(`${describe(where, raw)} etcd endpoints like http://127.0.0.1:2379, comma-separated`);
    }
  }
  return list;
}

const OPTIONS: ScalarOption[] = [
  { flag: 'listen', env: 'TENANTD_LISTEN', yaml: 'listen', apply: (c, r, w) => (c.listen = asListenAddress(r, w)) },
  { flag: 'data-dir', env: 'TENANTD_DATA_DIR', yaml: 'data_dir', apply: (c, r, w) => (c.dataDir = asString(r, w)) },
  { flag: 'shards', env: 'TENANTD_SHARDS', yaml: 'shards', apply: (c, r, w) => (c.shards = asInteger(r, w, 1, 256)) },
  { flag: 'sync', env: 'TENANTD_SYNC', yaml: 'sync', apply: (c, r, w) => (c.sync = asEnum(r, w, ['full', 'normal'])) },
  { flag: 'sync-flush', env: 'TENANTD_SYNC_FLUSH', yaml: 'sync_flush', apply: (c, r, w) => (c.syncFlush = asEnum(r, w, ['shared', 'per-commit'])) },
  {
    flag: 'max-open-dbs',
    env: 'TENANTD_MAX_OPEN_DBS',
    yaml: 'max_open_dbs',
    apply: (c, r, w) => (c.maxOpenDbs = asInteger(r, w, 1, 1_000_000)),
  },
  {
    flag: 'metrics-listen',
    env: 'TENANTD_METRICS_LISTEN',
    yaml: 'metrics_listen',
    apply: (c, r, w) => (c.metricsListen = r === 'off' || r === false ? null : asListenAddress(r, w)),
  },
  {
    flag: 'log-level',
    env: 'TENANTD_LOG_LEVEL',
    yaml: 'log_level',
    apply: (c, r, w) => (c.logLevel = asEnum(r, w, ['debug', 'info', 'warn', 'error', 'silent'])),
  },
  {
    flag: 'tenants-file',
    env: 'TENANTD_TENANTS_FILE',
    yaml: 'tenants_file',
    apply: (c, r, w) => (c.tenantsFile = asString(r, w)),
  },
  {
    flag: 'admin-key-file',
    env: 'TENANTD_ADMIN_KEY_FILE',
    yaml: 'admin_key_file',
    apply: (c, r, w) => (c.adminKeyFile = asString(r, w)),
  },
  {
    flag: 'default-plan',
    env: 'TENANTD_DEFAULT_PLAN',
    yaml: 'default_plan',
    apply: (c, r, w) => (c.defaultPlan = asString(r, w)),
  },
  {
    flag: 'group-commit',
    env: 'TENANTD_GROUP_COMMIT',
    yaml: 'group_commit',
    apply: (c, r, w) => (c.groupCommit = (r === true || r === false ? String(r) : asEnum(r, w, ['on', 'off', 'true', 'false'])).match(/^(on|true)$/) !== null),
  },
  {
    flag: 'drain-timeout-ms',
    env: 'TENANTD_DRAIN_TIMEOUT_MS',
    yaml: 'drain_timeout_ms',
    apply: (c, r, w) => (c.drainTimeoutMs = asInteger(r, w, 0, 600_000)),
  },
  {
    flag: 'max-query-timeout-ms',
    env: 'TENANTD_MAX_QUERY_TIMEOUT_MS',
    yaml: 'max_query_timeout_ms',
    apply: (c, r, w) => (c.maxQueryTimeoutMs = asInteger(r, w, 1, 86_400_000)),
  },
  {
    flag: 'migration-timeout-ms',
    env: 'TENANTD_MIGRATION_TIMEOUT_MS',
    yaml: 'migration_timeout_ms',
    apply: (c, r, w) => (c.migrationTimeoutMs = asInteger(r, w, 1, 3_600_000)),
  },
  {
    flag: 'telemetry',
    env: 'TENANTD_TELEMETRY',
    yaml: 'telemetry',
    apply: (c, r, w) => (c.telemetry = asSwitch(r, w)),
  },
  {
    flag: 'metrics-per-tenant',
    env: 'TENANTD_METRICS_PER_TENANT',
    yaml: 'metrics_per_tenant',
    apply: (c, r, w) => (c.metricsPerTenant = asSwitch(r, w)),
  },
  { flag: 'tls-cert', env: 'TENANTD_TLS_CERT', yaml: 'tls_cert', apply: (c, r, w) => (c.tlsCert = asPemFile(r, w, 'CERTIFICATE')) },
  { flag: 'tls-key', env: 'TENANTD_TLS_KEY', yaml: 'tls_key', apply: (c, r, w) => (c.tlsKey = asPemFile(r, w, 'PRIVATE KEY')) },
  {
    flag: 'tls-client-ca',
    env: 'TENANTD_TLS_CLIENT_CA',
    yaml: 'tls_client_ca',
    apply: (c, r, w) => (c.tlsClientCa = asPemFile(r, w, 'CERTIFICATE')),
  },
  { flag: 'metrics-tls', env: 'TENANTD_METRICS_TLS', yaml: 'metrics_tls', apply: (c, r, w) => (c.metricsTls = asSwitch(r, w)) },
  {
    flag: 'cluster-etcd',
    env: 'TENANTD_CLUSTER_ETCD',
    yaml: 'cluster_etcd',
    apply: (c, r, w) => (c.cluster.etcd = asEndpoints(r, w)),
  },
  {
    flag: 'node-id',
    env: 'TENANTD_NODE_ID',
    yaml: 'node_id',
    apply: (c, r, w) => {
      const id = asString(r, w);
      if (!/^[a-z0-9][a-z0-9_.-]{0,62}$/.test(id)) throw new ConfigError(`${describe(w, r)} 1-63 lowercase letters, digits, '.', '_' or '-'`);
      c.cluster.nodeId = id;
    },
  },
  { flag: 'advertise', env: 'TENANTD_ADVERTISE', yaml: 'advertise', apply: (c, r, w) => (c.cluster.advertise = asListenAddress(r, w)) },
  {
    flag: 'internal-advertise',
    env: 'TENANTD_INTERNAL_ADVERTISE',
    yaml: 'internal_advertise',
    apply: (c, r, w) => (c.cluster.internalAdvertise = asListenAddress(r, w)),
  },
  {
    flag: 'lease-ttl-s',
    env: 'TENANTD_LEASE_TTL_S',
    yaml: 'lease_ttl_s',
    apply: (c, r, w) => (c.cluster.leaseTtlSeconds = asInteger(r, w, 2, 300)),
  },
  { flag: 'cluster-tls-ca', env: 'TENANTD_CLUSTER_TLS_CA', yaml: 'cluster_tls_ca', apply: (c, r, w) => (c.cluster.tlsCa = asString(r, w)) },
  {
    flag: 'move-grace-ms',
    env: 'TENANTD_MOVE_GRACE_MS',
    yaml: 'move_grace_ms',
    apply: (c, r, w) => (c.cluster.moveGraceMs = asInteger(r, w, 0, 3_600_000)),
  },
  {
    flag: 'orphan-grace-ms',
    env: 'TENANTD_ORPHAN_GRACE_MS',
    yaml: 'orphan_grace_ms',
    apply: (c, r, w) => (c.cluster.orphanGraceMs = asInteger(r, w, 1_000, 86_400_000)),
  },
  {
    flag: 'transaction-idle-ms',
    env: 'TENANTD_TRANSACTION_IDLE_MS',
    yaml: 'transaction_idle_ms',
    apply: (c, r, w) => (c.transactionIdleMs = asInteger(r, w, 1, 3_600_000)),
  },
  {
    flag: 'idempotency-window-hours',
    env: 'TENANTD_IDEMPOTENCY_WINDOW_HOURS',
    yaml: 'idempotency_window_hours',
    apply: (c, r, w) => (c.idempotencyWindowHours = asInteger(r, w, 1, 24 * 365)),
  },
];

/**
 * A readable PEM file holding a `-----BEGIN ...${label}-----` block (any
 * key type for PRIVATE KEY). Whether the key matches the certificate is
 * checked once all options are in (checkTls).
 */
function asPemFile(raw: unknown, where: string, label: 'CERTIFICATE' | 'PRIVATE KEY'): string {
  const path = asString(raw, where);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`${where} ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  if (!new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(text)) {
    throw new ConfigError(`${where} ${path}: expected a PEM file with a ${label} block`);
  }
  return path;
}

function checkTls(config: Config): void {
  if ((config.tlsCert === null) !== (config.tlsKey === null)) {
    throw new ConfigError('--tls-cert and --tls-key (TENANTD_TLS_CERT/TENANTD_TLS_KEY, tls_cert/tls_key) go together: give both or neither');
  }
  if (config.tlsClientCa !== null && config.tlsCert === null) {
    throw new ConfigError('--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key: the server must speak TLS first');
  }
  if (config.metricsTls && config.tlsCert === null) {
    throw new ConfigError('--metrics-tls on needs --tls-cert and --tls-key');
  }
  if (config.tlsCert !== null && config.tlsKey !== null) {
    try {
      readTlsMaterial({ cert: config.tlsCert, key: config.tlsKey, clientCa: config.tlsClientCa });
    } catch (error) {
      throw new ConfigError((error as Error).message);
    }
  }
}

export const CONFIG_FLAGS = ['config', ...OPTIONS.map((o) => o.flag)];

/**
 * What `serve --help` says about each flag: the value it takes and what it
 * does. The listing itself comes from OPTIONS, so a flag is never missing
 * from it; one without a line here is listed with its variable alone.
 */
const OPTION_HELP: Record<string, [value: string, help: string]> = {
  config: ['FILE', 'a YAML file with these options (snake_case keys) and `plans`'],
  listen: ['HOST:PORT', 'the gRPC address (default 127.0.0.1:7070; port 0 picks one)'],
  'data-dir': ['DIR', 'catalog, tenant databases and admin.key (default ./data)'],
  shards: ['N', 'worker threads that run SQL (default: one per CPU)'],
  sync: ['full|normal', 'full: a commit is on disk before it is acknowledged (default full)'],
  'sync-flush': ['shared|per-commit', 'with --sync full: an fsync per commit, or one sync for a shard\'s commits before it answers (default per-commit)'],
  'max-open-dbs': ['N', 'open tenant databases kept, least recently used closed first (default 256)'],
  'metrics-listen': ['HOST:PORT|off', 'Prometheus /metrics and /healthz, /readyz (default 127.0.0.1:9464)'],
  'log-level': ['debug|info|warn|error|silent', 'JSON log lines on stderr (default info)'],
  'tenants-file': ['FILE', 'tenants and keys to create at start; existing tenants are left alone'],
  'admin-key-file': ['FILE', 'the admin key to use (default <data-dir>/admin.key, made at first start)'],
  'default-plan': ['PLAN', 'the plan of a tenant created without one, stored with it at creation (default free)'],
  'group-commit': ['on|off', "queued writes of one tenant share a commit, each in its own savepoint (default on)"],
  'drain-timeout-ms': ['MS', 'on SIGINT/SIGTERM, how long calls in flight may finish (default 10000)'],
  'migration-timeout-ms': ['MS', 'time limit of a migration step on one tenant, and of its validation (default 60000)'],
  telemetry: ['on|off', 'off: no OpenTelemetry SDK, no /metrics, no spans (default on)'],
  'metrics-per-tenant': ['on|off', 'a tenant_id attribute on the call counter: one series per tenant (default off)'],
  'max-query-timeout-ms': ['MS', 'the longest any statement may run, whatever its quota says; -1 in a quota means up to this (default 60000)'],
  'tls-cert': ['FILE', 'PEM certificate chain: serve TLS (with --tls-key)'],
  'tls-key': ['FILE', 'PEM private key of --tls-cert'],
  'tls-client-ca': ['FILE', 'PEM CA: clients must present a certificate it signed (mutual TLS)'],
  'metrics-tls': ['on|off', 'serve /metrics and the health endpoints over TLS with the same certificate (default off)'],
  'cluster-etcd': ['URL,...', 'join a cluster placed in these etcd endpoints (default: no cluster)'],
  'node-id': ['ID', "this node's id in the cluster (default: the host name)"],
  advertise: ['HOST:PORT', 'where clients, the proxy and other nodes reach this node (default 127.0.0.1 and the bound port)'],
  'internal-advertise': ['HOST:PORT', 'where other nodes send moved tenants (default --advertise)'],
  'lease-ttl-s': ['S', "seconds the node's etcd lease lives unrenewed; it refuses writes after 2/3 of it (default 10)"],
  'cluster-tls-ca': ['FILE', 'the CA nodes trust for each other (default --tls-client-ca)'],
  'move-grace-ms': ['MS', "how long a move's source keeps its old copy, forwarding its calls (default 30000)"],
  'orphan-grace-ms': ['MS', 'how long a copy of a tenant another live node owns stays before it is set aside under <data-dir>/orphans (default 600000)'],
  'transaction-idle-ms': ['MS', "longest wait for a transaction's next request before it is rolled back (default 5000)"],
  'idempotency-window-hours': ['H', 'how long an idempotency key is remembered (default 24)'],
};

/** `tenantd serve --help`: every flag, with its variable and YAML key. */
export function serveUsage(): string {
  const lines = [{ flag: 'config', env: 'TENANTD_CONFIG', yaml: '' }, ...OPTIONS].map((o) => {
    const [value, help] = OPTION_HELP[o.flag] ?? ['VALUE', ''];
    const names = `${o.env}${o.yaml ? `, ${o.yaml}:` : ''}`;
    return `  --${o.flag} ${value}\n      ${help ? `${help}; ` : ''}${names}`;
  });
  return ['usage: tenantd serve [flags]', 'Flags win over TENANTD_* variables, variables over the --config file.', ...lines].join('\n');
}

function where(source: Source, name: string): string {
  return source === 'flag' ? `--${name}` : source === 'environment' ? name : `config file key "${name}"`;
}

/** Splits `--name value` and `--name=value` flags; rejects unknown ones by name. */
export function parseFlags(argv: readonly string[]): Map<string, string> {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument ${JSON.stringify(arg)}; flags look like --name value`);
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    if (!CONFIG_FLAGS.includes(name)) {
      throw new ConfigError(`unknown flag --${name}; known flags: ${CONFIG_FLAGS.map((f) => `--${f}`).join(', ')}`);
    }
    let value: string | undefined = eq === -1 ? argv[++i] : arg.slice(eq + 1);
    if (value === undefined) throw new ConfigError(`--${name} needs a value`);
    flags.set(name, value);
  }
  return flags;
}

/** A plan that sets nothing: every quota unlimited. */
function unlimitedPlan(): QuotaValues {
  return Object.fromEntries(QUOTA_FIELDS.map((f) => [f, -1])) as unknown as QuotaValues;
}

/**
 * `plans:` in the YAML file. A plan starts from the plan it names in
 * `extends` (a built-in one or another in the file). Without `extends`, a
 * built-in name (free, pro, enterprise) starts from its documented values,
 * and any other plan from nothing: a quota it leaves unset is unlimited
 * (-1), never silently the free plan's.
 */
function parsePlans(raw: unknown, into: Config): void {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`config file key "plans": expected a map of plan name to quotas`);
  }
  const specs = raw as Record<string, unknown>;
  const resolved = new Map<string, QuotaValues>();
  const resolving: string[] = [];
  const resolve = (plan: string): QuotaValues => {
    const done = resolved.get(plan);
    if (done) return done;
    const quotas = specs[plan];
    if (typeof quotas !== 'object' || quotas === null || Array.isArray(quotas)) {
      throw new ConfigError(`config file key "plans.${plan}": expected a map of quota name to integer (and optionally extends: <plan>)`);
    }
    if (resolving.includes(plan)) throw new ConfigError(`config file key "plans.${plan}.extends": a cycle (${[...resolving, plan].join(' -> ')})`);
    resolving.push(plan);
    const { extends: parent, ...values } = quotas as Record<string, unknown>;
    let base: QuotaValues;
    if (parent === undefined || parent === plan) base = structuredClone(DEFAULT_PLANS[plan] ?? unlimitedPlan());
    else if (typeof parent !== 'string' || (specs[parent] === undefined && !DEFAULT_PLANS[parent])) {
      const known = [...new Set([...Object.keys(DEFAULT_PLANS), ...Object.keys(specs)])].filter((p) => p !== plan);
      throw new ConfigError(`config file key "plans.${plan}.extends": expected the name of another plan (${known.join(', ')}), got ${JSON.stringify(parent)}`);
    } else base = structuredClone(specs[parent] !== undefined ? resolve(parent) : DEFAULT_PLANS[parent]!);
    for (const [key, value] of Object.entries(values)) {
      const field = QUOTA_FIELDS.find((f) => snakeCase(f) === key);
      if (!field) {
        throw new ConfigError(
          `config file key "plans.${plan}.${key}": unknown quota; known: extends, ${QUOTA_FIELDS.map(snakeCase).join(', ')}`,
        );
      }
      base[field] = asInteger(value, `config file key "plans.${plan}.${key}"`, -1, Number.MAX_SAFE_INTEGER);
      if (base[field] === 0) throw new ConfigError(`config file key "plans.${plan}.${key}": 0 is not a limit; use -1 for unlimited`);
    }
    resolving.pop();
    resolved.set(plan, base);
    return base;
  };
  for (const plan of Object.keys(specs)) into.plans[plan] = resolve(plan);
}

/**
 * Builds the config from argv (without `serve`), an environment and the YAML
 * file that `--config`/`TENANTD_CONFIG` names.
 */
export function loadConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Config {
  const flags = parseFlags(argv);
  const config = defaultConfig();

  const configPath = flags.get('config') ?? env.TENANTD_CONFIG;
  if (configPath) {
    let doc: unknown;
    try {
      doc = parseYaml(readFileSync(configPath, 'utf8'));
    } catch (error) {
      throw new ConfigError(`--config ${configPath}: ${(error as Error).message}`);
    }
    if (doc !== null && (typeof doc !== 'object' || Array.isArray(doc))) {
      throw new ConfigError(`--config ${configPath}: expected a YAML map at the top level`);
    }
    const map = (doc ?? {}) as Record<string, unknown>;
    const known = new Set([...OPTIONS.map((o) => o.yaml), 'plans']);
    for (const key of Object.keys(map)) {
      if (!known.has(key)) throw new ConfigError(`config file key "${key}": unknown; known keys: ${[...known].join(', ')}`);
    }
    if (map.plans !== undefined) parsePlans(map.plans, config);
    for (const option of OPTIONS) {
      if (map[option.yaml] !== undefined) option.apply(config, map[option.yaml], where('config file', option.yaml));
    }
  }
  for (const option of OPTIONS) {
    const value = env[option.env];
    if (value !== undefined && value !== '') option.apply(config, value, where('environment', option.env));
  }
  for (const option of OPTIONS) {
    const value = flags.get(option.flag);
    if (value !== undefined) option.apply(config, value, where('flag', option.flag));
  }
  checkTls(config);
  if (!config.plans[config.defaultPlan]) {
    throw new ConfigError(
      `default plan ${JSON.stringify(config.defaultPlan)} is not among the plans: ${Object.keys(config.plans).join(', ')}`,
    );
  }
  return config;
}
