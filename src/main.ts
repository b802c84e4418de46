/**
 * The `tenantd` command. `tenantd serve [flags]` runs the service until
 * SIGINT/SIGTERM, then drains calls in flight and closes every database;
 * the other commands are the operator's admin client (src/cli/).
 */
// Everything is imported when used: the operator's commands must not pay
// for loading the server.
import module from 'node:module';

// Node 22.1 and later keep the compiled code of the modules loaded from here
// on (in the OS temp dir; NODE_DISABLE_COMPILE_CACHE=1 turns it off): a CLI
// command starts ~50 ms sooner. Node 20 has no such cache.
(module as { enableCompileCache?: () => unknown }).enableCompileCache?.();

/** What shutdown may take past the drain timeout: closing shards and catalog, flushing telemetry. */
const SHUTDOWN_GRACE_MS = 600;
/** After interrupting every statement: time for the workers to come back from SQLite before the exit. */
const INTERRUPT_SETTLE_MS = 100;

/**
 * Exits without waiting for the drain. process.exit() waits for every worker
 * thread to stop, which one inside a statement does only when the statement
 * ends: the statements are interrupted first, and the exit follows a moment later.
 */
function exitNow(server: { interruptAll(): void }, code: number): void {
  // The interrupted statements may let the normal shutdown finish first: it must not exit 0.
  forcedExit = code;
  server.interruptAll();
  setTimeout(() => process.exit(code), INTERRUPT_SETTLE_MS);
}

/** The exit code exitNow() chose, which wins over the one main() returns. */
let forcedExit: number | null = null;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'admin-key') return (await import('./adminKeyCommand.ts')).adminKeyCommand(rest);
  if (command === 'cluster') return (await import('./cluster/cli.ts')).clusterCli(rest);
  if (command !== 'serve') return (await import('./cli/index.ts')).cli(argv);
  const { ConfigError, loadConfig, serveUsage } = await import('./config.ts');
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${serveUsage()}\n`);
    return 0;
  }
  const [{ createLogger }, { startServer }, { installTelemetry }, { DataDirLockedError }, { installProcessGuard }] = await Promise.all([
    import('./log.ts'),
    import('./server.ts'),
    import('./telemetry/sdk.ts'),
    import('./dataDirLock.ts'),
    import('./processGuard.ts'),
  ]);
  let config;
  try {
    config = loadConfig(rest);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`tenantd: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  // Tenant data, the catalog and keys are nobody else's: directories 0700, files 0600,
  // including the -wal and -shm files SQLite creates in the shard workers.
  process.umask(0o077);
  const logger = createLogger(config.logLevel);
  installProcessGuard(logger);
  // Before the server starts: its instruments come from the meter provider installed here.
  const telemetry = installTelemetry(config, logger);
  let server;
  try {
    server = await startServer(config, logger, { metricsHandler: telemetry?.metricsHandler ?? null });
  } catch (error) {
    await telemetry?.shutdown();
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`tenantd: ${message}\n`);
    return error instanceof ConfigError || error instanceof DataDirLockedError ? 2 : 1;
  }
  if (server.adminKey.created) {
    // Only a person at a terminal sees stdout; piped, it lands in log collectors and container logs.
    process.stdout.write(
      process.stdout.isTTY
        ? `\nAdmin key (shown once, also saved to ${server.adminKey.path}):\n\n  ${server.adminKey.key}\n\n`
        : `Admin key created and saved to ${server.adminKey.path} (mode 0600); not printed because stdout is not a terminal\n`,
    );
  }
  process.stdout.write(`tenantd listening on port ${server.port}\n`);
  // SIGHUP re-reads the TLS files (they are also polled); without TLS it changes nothing.
  process.on('SIGHUP', () => {
    if (!server.reloadCertificates()) logger.warn('SIGHUP: no TLS certificate reloaded (TLS off, or the files are invalid)');
  });
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  // A second signal means "now": said in the log before the process goes.
  const immediate = (second: NodeJS.Signals): void => {
    logger.warn('second signal during shutdown; exiting now', { signal: second, first: signal });
    exitNow(server, 130);
  };
  process.once('SIGINT', immediate);
  process.once('SIGTERM', immediate);
  logger.info('shutting down', { signal });
  // The drain ends calls at drainTimeoutMs; closing the shards and the catalog
  // after that is quick, unless a worker is stuck in native code: then the
  // process goes anyway, within drain timeout + 1 s.
  const bound = config.drainTimeoutMs + SHUTDOWN_GRACE_MS;
  let timer: NodeJS.Timeout | undefined;
  const finished = await Promise.race([
    server.shutdown().then(() => true),
    new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), bound))),
  ]);
  clearTimeout(timer);
  if (!finished) {
    logger.error('shutdown did not finish in time; exiting', { afterMs: bound });
    exitNow(server, 1);
    return new Promise<number>(() => undefined);
  }
  // Flushes the last spans and metrics to OTLP, if configured (bounded too).
  await Promise.race([telemetry?.shutdown(), new Promise((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS / 2).unref())]);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(forcedExit ?? code),
  (error: unknown) => {
    process.stderr.write(`tenantd: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  },
);
