/**
 * The `tenantd` command. `tenantd serve [flags]` runs the service until
 * SIGINT/SIGTERM, then drains calls in flight and closes every database;
 * the other commands are the operator's admin client (src/cli/).
 */
// Everything is imported when used: the operator's commands must not pay
// for loading the server (a CLI call starts in well under 300 ms).

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command !== 'serve') return (await import('./cli/index.ts')).cli(argv);
  const { ConfigError, loadConfig, serveUsage } = await import('./config.ts');
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${serveUsage()}\n`);
    return 0;
  }
  const [{ createLogger }, { startServer }, { installTelemetry }] = await Promise.all([
    import('./log.ts'),
    import('./server.ts'),
    import('./telemetry/sdk.ts'),
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
  const logger = createLogger(config.logLevel);
  // Before the server starts: its instruments come from the meter provider installed here.
  const telemetry = installTelemetry(config, logger);
  let server;
  try {
    server = await startServer(config, logger, { metricsHandler: telemetry?.metricsHandler ?? null });
  } catch (error) {
    await telemetry?.shutdown();
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`tenantd: ${message}\n`);
    return error instanceof ConfigError ? 2 : 1;
  }
  if (server.adminKey.created) {
    process.stdout.write(
      `\nAdmin key (shown once, also saved to ${server.adminKey.path}):\n\n  ${server.adminKey.key}\n\n`,
    );
  }
  process.stdout.write(`tenantd listening on port ${server.port}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await server.shutdown();
  // Flushes the last spans and metrics to OTLP, if configured.
  await telemetry?.shutdown();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`tenantd: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  },
);
