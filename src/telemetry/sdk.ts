/**
 * Installs the OpenTelemetry SDK. Only the entry point (main.ts) and tests
 * import this file: everything else in src/ and workers/ uses
 * `@opentelemetry/api` alone and works unchanged, as no-ops, without it.
 *
 * - Metrics: a Prometheus exporter that does not start its own server; its
 *   handler is served at `/metrics` on the metrics address beside `/healthz`
 *   and `/readyz`. OTLP (http/protobuf) as well when
 *   OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set.
 * - Traces: OTLP (http/protobuf) when OTEL_EXPORTER_OTLP_ENDPOINT or
 *   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, with the AsyncLocalStorage
 *   context manager and the W3C propagators. Sampling follows
 *   OTEL_TRACES_SAMPLER (default: parent-based, always on).
 * - Nothing at all under `--telemetry off`, or when there is neither a
 *   metrics address nor an OTLP endpoint.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { context, diag, DiagLogLevel, metrics, propagation, trace } from '@opentelemetry/api';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-proto';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { defaultResource, detectResources, envDetector, resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader, type IMetricReader } from '@opentelemetry/sdk-metrics';
import { BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';
import type { Config } from '../config.ts';
import type { MetricsHandler } from '../httpHealth.ts';
import type { Logger } from '../log.ts';
import { PACKAGE_ROOT } from '../paths.ts';

export interface InstalledTelemetry {
  /** For startServer's `metricsHandler`; null when Prometheus is off. */
  metricsHandler: MetricsHandler | null;
  /** Flushes the exporters and removes the global providers. */
  shutdown(): Promise<void>;
}

export interface TelemetryOptions {
  /** Span processors besides OTLP's (tests pass an in-memory exporter's); any of them turns tracing on. */
  spanProcessors?: SpanProcessor[];
}

function serviceVersion(): string {
  try {
    return (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

function resource(): Resource {
  // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (envDetector) win over our defaults.
  return defaultResource()
    .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: 'tenantd', [ATTR_SERVICE_VERSION]: serviceVersion() }))
    .merge(detectResources({ detectors: [envDetector] }));
}

function metricExportIntervalMs(env: NodeJS.ProcessEnv): number {
  const value = Number(env.OTEL_METRIC_EXPORT_INTERVAL);
  return Number.isInteger(value) && value > 0 ? value : 60_000;
}

/**
 * Installs what `config` and the OTEL_* environment ask for, or returns null
 * when they ask for nothing. Exporter failures are logged as warnings; they
 * never reach a call.
 */
export function installTelemetry(config: Config, logger: Logger, options: TelemetryOptions = {}): InstalledTelemetry | null {
  const env = process.env;
  if (!config.telemetry || env.OTEL_SDK_DISABLED === 'true') return null;
  const otlpTraces = Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
  const otlpMetrics = Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT);
  const prometheus = config.metricsListen !== null;
  const spanProcessors = [...(otlpTraces ? [new BatchSpanProcessor(new OTLPTraceExporter())] : []), ...(options.spanProcessors ?? [])];
  if (!prometheus && !otlpMetrics && spanProcessors.length === 0) return null;

  diag.setLogger(
    {
      error: (message, ...args) => logger.warn(`opentelemetry: ${message}`, { detail: args.map(String).join(' ') }),
      warn: (message, ...args) => logger.warn(`opentelemetry: ${message}`, { detail: args.map(String).join(' ') }),
      info: () => {},
      debug: () => {},
      verbose: () => {},
    },
    DiagLogLevel.WARN,
  );
  const shared = resource();

  const readers: IMetricReader[] = [];
  const exporter = prometheus ? new PrometheusExporter({ preventServerStart: true }) : null;
  if (exporter) readers.push(exporter);
  if (otlpMetrics) {
    readers.push(new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter(), exportIntervalMillis: metricExportIntervalMs(env) }));
  }
  const meterProvider = readers.length > 0 ? new MeterProvider({ resource: shared, readers }) : null;
  if (meterProvider) metrics.setGlobalMeterProvider(meterProvider);

  const tracerProvider = spanProcessors.length > 0 ? new NodeTracerProvider({ resource: shared, spanProcessors }) : null;
  tracerProvider?.register();

  return {
    metricsHandler: exporter ? (req, res) => exporter.getMetricsRequestHandler(req, res) : null,
    async shutdown() {
      await Promise.allSettled([meterProvider?.shutdown(), tracerProvider?.shutdown()]);
      if (meterProvider) metrics.disable();
      if (tracerProvider) {
        trace.disable();
        context.disable();
        propagation.disable();
      }
      diag.disable();
    },
  };
}
