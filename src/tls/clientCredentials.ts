/**
 * Channel credentials for tenantd's own clients (the CLI's `--tls-ca`,
 * `--tls-cert`, `--tls-key`): plaintext when no option is given, TLS
 * otherwise, trusting `ca` (or the system roots without it), with a client
 * certificate for servers that require mutual TLS. Errors name the option.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';

export interface ClientTlsOptions {
  /** PEM CA certificate(s) to trust instead of the system roots. */
  ca?: string | null;
  /** PEM client certificate (mutual TLS); needs `key`. */
  cert?: string | null;
  key?: string | null;
  /** Force TLS with the system roots when no file is given. */
  tls?: boolean;
}

export class ClientTlsError extends Error {
  override name = 'ClientTlsError';
}

function read(path: string, option: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new ClientTlsError(`${option} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

export function usesTls(options: ClientTlsOptions): boolean {
  return Boolean(options.tls || options.ca || options.cert || options.key);
}

export function channelCredentials(options: ClientTlsOptions = {}): grpc.ChannelCredentials {
  if (!usesTls(options)) return grpc.credentials.createInsecure();
  if (Boolean(options.cert) !== Boolean(options.key)) {
    throw new ClientTlsError('--tls-cert and --tls-key go together: give both for a client certificate, or neither');
  }
  const ca = options.ca ? read(options.ca, '--tls-ca') : null;
  const key = options.key ? read(options.key, '--tls-key') : null;
  const cert = options.cert ? read(options.cert, '--tls-cert') : null;
  return grpc.credentials.createSsl(ca, key, cert);
}
