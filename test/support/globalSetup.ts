/**
 * Before any test file: build/tenantd.binpb current with proto/ (the
 * descriptor set that grpc-js and reflection load), so parallel test workers
 * never race to rebuild it.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export default function setup(): void {
  execFileSync(process.execPath, [fileURLToPath(new URL('../../scripts/build-descriptors.mjs', import.meta.url))], { stdio: 'inherit' });
}
