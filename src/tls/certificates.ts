/**
 * The server's TLS material (`--tls-cert`, `--tls-key`, `--tls-client-ca`),
 * read, checked and kept current. Files are polled (a stat a second; a
 * Kubernetes secret or certbot swaps them by rename, which inotify-style
 * watches miss) and re-read on SIGHUP. New material reaches grpc-js through
 * its CertificateProvider interface and the HTTPS metrics server through
 * onChange: both swap their secure context, so new connections get the new
 * certificate while open ones, and their streams, carry on. A bad or
 * half-written pair (cert updated, key not yet) is logged and the previous
 * material stays in use until the files agree again.
 */
import { unwatchFile, watchFile, readFileSync } from 'node:fs';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.ts';

type CertificateProvider = grpc.experimental.CertificateProvider;
type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;

export interface TlsFiles {
  cert: string;
  key: string;
  /** Turns on mutual TLS: clients must present a certificate this CA signed. */
  clientCa: string | null;
}

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer | null;
  /** The leaf certificate's serial number and expiry, for logs. */
  serial: string;
  validTo: string;
}

/** Reads and checks the files; the message names the option that is wrong. */
export function readTlsMaterial(files: TlsFiles, names = { cert: '--tls-cert', key: '--tls-key', clientCa: '--tls-client-ca' }): TlsMaterial {
  const read = (path: string, option: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (error) {
      throw new Error(`${option} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
  };
  const cert = read(files.cert, names.cert);
  const key = read(files.key, names.key);
  const ca = files.clientCa ? read(files.clientCa, names.clientCa) : null;
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (error) {
    throw new Error(`${names.cert} ${files.cert}: not a PEM certificate (${(error as Error).message})`);
  }
  try {
    if (!leaf.checkPrivateKey(createPrivateKey(key))) throw new Error('it is not the key of that certificate');
  } catch (error) {
    throw new Error(`${names.key} ${files.key}: not the private key of ${names.cert} ${files.cert} (${(error as Error).message})`);
  }
  if (ca) {
    try {
      new X509Certificate(ca);
    } catch (error) {
      throw new Error(`${names.clientCa} ${files.clientCa}: not a PEM CA certificate (${(error as Error).message})`);
    }
  }
  // What the TLS stack will do with it: catches what the parsers above let through.
  try {
    createSecureContext({ cert, key, ...(ca ? { ca } : {}) });
  } catch (error) {
    throw new Error(`${names.cert}/${names.key}: OpenSSL refuses them (${(error as Error).message})`);
  }
  return { cert, key, ca, serial: leaf.serialNumber, validTo: leaf.validTo };
}

export class ReloadingCertificates implements CertificateProvider {
  private material: TlsMaterial;
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();
  private readonly changeListeners = new Set<(material: TlsMaterial) => void>();
  private readonly watched: string[];
  private pending: NodeJS.Timeout | null = null;

  constructor(
    readonly files: TlsFiles,
    private readonly logger: Logger,
    pollMs = 1_000,
  ) {
    this.material = readTlsMaterial(files);
    this.watched = [files.cert, files.key, ...(files.clientCa ? [files.clientCa] : [])];
    // persistent: false, so the watch never keeps a stopping process alive.
    for (const path of this.watched) watchFile(path, { interval: pollMs, persistent: false }, () => this.scheduleReload('file changed'));
  }

  get current(): TlsMaterial {
    return this.material;
  }

  get mutual(): boolean {
    return this.files.clientCa !== null;
  }

  /** Re-reads the files now; true if the new material is in use. */
  reload(reason: string): boolean {
    let next: TlsMaterial;
    try {
      next = readTlsMaterial(this.files);
    } catch (error) {
      this.logger.error('TLS files not reloaded; still serving the previous certificate', { reason, error: (error as Error).message });
      return false;
    }
    const changed = !next.cert.equals(this.material.cert) || !next.key.equals(this.material.key) || !(next.ca ?? Buffer.alloc(0)).equals(this.material.ca ?? Buffer.alloc(0));
    this.material = next;
    if (changed) {
      for (const listener of this.identityListeners) listener({ certificate: next.cert, privateKey: next.key });
      if (next.ca) for (const listener of this.caListeners) listener({ caCertificate: next.ca });
      for (const listener of this.changeListeners) listener(next);
      this.logger.info('TLS certificate reloaded', { reason, serial: next.serial, validTo: next.validTo });
    }
    return true;
  }

  /** For servers other than grpc-js (the HTTPS metrics port). */
  onChange(listener: (material: TlsMaterial) => void): void {
    this.changeListeners.add(listener);
  }

  close(): void {
    if (this.pending) clearTimeout(this.pending);
    for (const path of this.watched) unwatchFile(path);
    this.changeListeners.clear();
  }

  /** A cert and its key written one after the other change twice within a poll: read once, after both. */
  private scheduleReload(reason: string): void {
    if (this.pending) clearTimeout(this.pending);
    this.pending = setTimeout(() => {
      this.pending = null;
      this.reload(reason);
    }, 200);
    this.pending.unref();
  }

  // grpc-js's CertificateProvider: listeners get the current value, then each change. Not
  // synchronously: grpc-js registers its context watcher only after adding the listener,
  // and a value delivered before that would leave the port refusing every connection.
  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    queueMicrotask(() => {
      if (this.caListeners.has(listener) && this.material.ca) listener({ caCertificate: this.material.ca });
    });
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    queueMicrotask(() => {
      if (this.identityListeners.has(listener)) listener({ certificate: this.material.cert, privateKey: this.material.key });
    });
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }
}

/**
 * grpc-js credentials over the reloading files; with a client CA, a client
 * without a certificate that CA signed fails the handshake.
 */
export function grpcServerCredentials(certs: ReloadingCertificates): grpc.ServerCredentials {
  // grpc-js's parameter names are swapped: the first is the identity provider (server-credentials.js).
  return grpc.experimental.createCertificateProviderServerCredentials(certs, certs.mutual ? certs : null, certs.mutual);
}
