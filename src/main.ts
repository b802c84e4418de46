/**
 * The `tenantd` command. `tenantd serve [flags]` runs the service until
 * SIGINT/SIGTERM, then drains calls in flight and closes every database;
 * the other commands are the operator's admin client (cli.ts).
 */
import { ConfigError, loadConfig } from './config.ts';
import { createLogger } from './log.ts';
import { startServer } from './server.ts';
import { installTelemetry } from './telemetry/sdk.ts';
import { installProcessGuard } from './processGuard.ts';
import { CLI_COMMANDS, CLI_USAGE, cli } from './cli.ts';

const USAGE = `usage: tenantd serve [--listen 127.0.0.1:7070] [--data-dir ./data] [--shards N] [--sync full|normal]
                     [--max-open-dbs N] [--metrics-listen 127.0.0.1:9464|off] [--config tenantd.yaml]
                     [--tenants-file tenants.yaml] [--log-level debug|info|warn|error]
                     [--telemetry on|off] [--metrics-per-tenant on|off]`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${USAGE}\n${CLI_USAGE}\n`);
    return command === undefined ? 2 : 0;
  }
  if (CLI_COMMANDS.has(command)) return cli(command, rest);
  if (command !== 'serve') {
    process.stderr.write(`unknown command ${JSON.stringify(command)}\n${USAGE}\n`);
    return 2;
  }
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
