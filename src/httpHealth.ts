/**
 * `/healthz` (the process is up) and `/readyz` (it accepts calls; 503 while
 * draining) over plain HTTP for compose and orchestrators, on the metrics
 * address. They agree with grpc.health.v1 because both read HealthState.
 * `/metrics` is the Prometheus exporter's handler when the entry point
 * installed one (one port serves all three), else 404.
 */
import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { HealthState } from './grpc/healthService.ts';
import type { ReloadingCertificates } from './tls/certificates.ts';

export type MetricsHandler = (req: IncomingMessage, res: ServerResponse) => void;

export async function startHttpHealth(
  listen: string,
  health: HealthState,
  metricsHandler: MetricsHandler | null = null,
  tls: ReloadingCertificates | null = null,
): Promise<{ server: Server; port: number }> {
  const handler: RequestListener = (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/metrics' && metricsHandler) {
      metricsHandler(req, res);
    } else if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const ready = health.isServing;
      res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' }).end(ready ? 'ready\n' : 'draining\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  };
  // HTTPS with the gRPC port's certificate (no client certificate asked: scrapers and probes
  // rarely have one); reloads swap the context for new connections as gRPC's do.
  let server: Server;
  if (tls) {
    const https = createHttpsServer({ cert: tls.current.cert, key: tls.current.key }, handler);
    tls.onChange((material) => https.setSecureContext({ cert: material.cert, key: material.key }));
    server = https as unknown as Server;
  } else {
    server = createServer(handler);
  }
  const colon = listen.lastIndexOf(':');
  const host = listen.slice(0, colon).replace(/^\[|\]$/g, '');
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(listen.slice(colon + 1)), host, () => resolve());
  });
  return { server, port: (server.address() as AddressInfo).port };
}
