#!/usr/bin/env node
// Builds build/tenantd.binpb: the FileDescriptorSet of every file under proto/
// and the google/protobuf files they import, compiled by buf (protoc's
// descriptors exactly). grpc-js loads its service definitions from it and
// server reflection serves its files byte for byte (src/protos.ts), so the
// two can never differ. Runs at postinstall, prestart and before the tests;
// quiet and fast when proto/ has not changed since the last build.
//
//   node scripts/build-descriptors.mjs           rebuild if stale
//   node scripts/build-descriptors.mjs --check   exit 1 if stale (CI, runtime)
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const scriptPath = fileURLToPath(import.meta.url);
const root = dirname(dirname(scriptPath));
const protoDir = join(root, 'proto');
const output = join(root, 'build', 'tenantd.binpb');

/** Newest mtime of proto/, its directories (a deleted file changes one) and its .proto files. */
function newestSource(dir) {
  let newest = statSync(dir).mtimeMs;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (entry.name.endsWith('.proto')) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

const outTime = existsSync(output) ? statSync(output).mtimeMs : null;
const stale = outTime === null || outTime <= Math.max(newestSource(protoDir), statSync(scriptPath).mtimeMs);
if (process.argv.includes('--check')) {
  if (stale) console.error(`build-descriptors: ${relative(root, output)} is missing or older than proto/`);
  process.exit(stale ? 1 : 0);
}
if (!stale) process.exit(0);

let buf;
try {
  buf = join(dirname(createRequire(import.meta.url).resolve('@bufbuild/buf/package.json')), 'bin', 'buf');
} catch {
  console.error('build-descriptors: @bufbuild/buf is not installed (a devDependency): run `npm install`, then this script');
  process.exit(1);
}

mkdirSync(dirname(output), { recursive: true });
// Build beside the target and rename: concurrent builds (parallel test
// workers, a server starting) never read a partial file.
const tmp = `${output}.${process.pid}.tmp`;
// --exclude-source-info: protoc's descriptors without comments and spans,
// what `protoc --include_imports -o` writes. Imports are included by default.
const args = ['build', protoDir, '--exclude-source-info', '-o', tmp];
const result = spawnSync(buf, args, { encoding: 'utf8', cwd: root });
if (result.error || result.status !== 0) {
  rmSync(tmp, { force: true });
  console.error(`build-descriptors: buf ${args.join(' ')} failed`);
  if (result.error) console.error(String(result.error));
  process.stderr.write(result.stdout ?? '');
  process.stderr.write(result.stderr ?? '');
  process.exit(1);
}
renameSync(tmp, output);
console.log(`build-descriptors: built ${relative(process.cwd(), output) || output} from proto/`);
