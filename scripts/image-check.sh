#!/usr/bin/env bash
# The container image, checked without Docker (no daemon on the CI host):
# stages exactly the files the Dockerfile's runtime stage copies (read from
# its COPY --from=build lines), with node_modules pruned to production
# dependencies as its build stage does, then runs that tree the way the
# image does: `node dist/src/main.js serve` as an unprivileged user with the
# image's environment, the operator CLI from the same tree, the Dockerfile's
# own HEALTHCHECK command, and a SIGTERM stop. It fails if the runtime tree
# lacks a file the server needs at run time, imports a dev dependency, or
# does not stop cleanly.
#
#   npm run build && scripts/image-check.sh     (uses the node on PATH)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

[[ -f dist/src/main.js ]] || { echo "image-check: no dist/; run npm run build first" >&2; exit 2; }
stage=$(mktemp -d "${TMPDIR:-/tmp}/tenantd-image-XXXXXX")
server_pid=
cleanup() {
  local status=$?
  [[ -n $server_pid ]] && kill -KILL "$server_pid" 2>/dev/null || true
  if ((status != 0)) && [[ -s $stage/log/serve.log ]]; then
    echo "image-check: failed; the server's log:" >&2
    tail -n 20 "$stage/log/serve.log" >&2
  fi
  rm -rf "$stage"
}
trap cleanup EXIT
app=$stage/app
mkdir -p "$app" "$stage/data" "$stage/log"

# The runtime stage's COPY --from=build lines: every word but the last is a
# path under /app in the build stage, the last is where it goes under /app
# (Docker's rules: a directory's contents go into the destination; files go
# into it when it ends with /).
runtime=$(awk '/^FROM /{n++} n==2' Dockerfile)
copies=0
while read -r -a words; do
  dest=$app/${words[-1]}
  for src in "${words[@]:2:${#words[@]}-3}"; do
    rel=${src#/app/}
    if [[ -d $rel ]]; then
      mkdir -p "$dest"
      cp -a "$rel/." "$dest/"
    elif [[ $dest == */ ]]; then
      mkdir -p "$dest"
      cp -a "$rel" "$dest"
    else
      mkdir -p "$(dirname "$dest")"
      cp -a "$rel" "$dest"
    fi
    copies=$((copies + 1))
  done
done < <(grep -E '^COPY --from=build ' <<<"$runtime")
# The build stage's `npm prune --omit=dev`, done here on the copy.
[[ -d $app/node_modules ]] || { echo "image-check: the runtime stage copies no node_modules" >&2; exit 1; }
cp package-lock.json "$app/"
(cd "$app" && npm prune --omit=dev --no-audit --no-fund >/dev/null)
rm -f "$app/package-lock.json"
((copies >= 5)) || { echo "image-check: only $copies COPY --from=build paths found in the Dockerfile's runtime stage" >&2; exit 1; }
for dev in tsx esbuild typescript vitest @bufbuild/buf; do
  [[ ! -e $app/node_modules/$dev ]] || { echo "image-check: dev dependency $dev in the runtime tree" >&2; exit 1; }
done
[[ ! -e $app/src && ! -e $app/test && ! -e $app/data ]] || { echo "image-check: sources, tests or data in the runtime tree" >&2; exit 1; }

# As the image's `node` user: unprivileged. Running as root here, that is nobody.
run=()
if [[ $(id -u) == 0 ]]; then
  # Only the staging tree: node itself must already be runnable by anyone, as in the image.
  chmod -R a+rX "$stage"
  chown nobody "$stage/data" "$stage/log"
  run=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
fi
chmod 700 "$stage/data"
port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
grpc_port=$(port)
metrics_port=$(port)

env_image=(
  NODE_ENV=production
  TENANTD_LISTEN=127.0.0.1:$grpc_port
  TENANTD_DATA_DIR=$stage/data
  TENANTD_METRICS_LISTEN=127.0.0.1:$metrics_port
  MALLOC_MMAP_THRESHOLD_=131072
  MALLOC_TRIM_THRESHOLD_=131072
)
node_bin=$(command -v node)
(cd "$app" && exec env -i PATH="$PATH" HOME=/nonexistent "${env_image[@]}" "${run[@]}" "$node_bin" dist/src/main.js serve) >"$stage/log/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q 'listening' "$stage/log/serve.log" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$stage/log/serve.log" >&2; echo "image-check: the server exited at start" >&2; exit 1; }
  sleep 0.1
done
grep -q 'listening' "$stage/log/serve.log" || { cat "$stage/log/serve.log" >&2; echo "image-check: the server did not start in 10 s" >&2; exit 1; }

cli() { (cd "$app" && env -i PATH="$PATH" HOME=/nonexistent TENANTD_ADDRESS="127.0.0.1:$grpc_port" TENANTD_ADMIN_KEY="$(cat "$stage/data/admin.key")" "${run[@]}" "$node_bin" dist/src/main.js --timeout-ms 30000 "$@"); }
cli tenants create image-check -o json | grep -q '"tenantId": "image-check"'
cli sql image-check 'CREATE TABLE t (a)' -o json >/dev/null
cli sql image-check 'INSERT INTO t VALUES (42) RETURNING a' -o json | grep -q '"integerValue": "42"'
# Work that runs in the file-task pool (its own worker bootstrap): a backup and an integrity check.
cli backup image-check "$stage/log/image-check.sqlite" >/dev/null
[[ -s $stage/log/image-check.sqlite ]] || { echo "image-check: the backup wrote nothing" >&2; exit 1; }
cli maintain image-check INTEGRITY_CHECK -o json >/dev/null

# The Dockerfile's HEALTHCHECK command, on this run's metrics port.
health=$(grep -A1 '^HEALTHCHECK' Dockerfile | sed -n 's/^ *CMD //p' | sed "s/port:9464/port:$metrics_port/")
[[ $health == node\ -e* ]] || { echo "image-check: cannot read the HEALTHCHECK command" >&2; exit 1; }
eval "${run[*]} $node_bin ${health#node }" || { echo "image-check: the HEALTHCHECK failed" >&2; exit 1; }

# Data private to the user the server runs as (umask 077 in serve).
mode=$(stat -c %a "$stage/data/tenants" 2>/dev/null || stat -c %a "$stage/data")
[[ $mode == 700 ]] || { echo "image-check: data directory mode $mode, not 700" >&2; exit 1; }

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
((status == 0)) || { cat "$stage/log/serve.log" >&2; echo "image-check: serve exited $status on SIGTERM" >&2; exit 1; }
echo "image-check: the runtime tree ($(du -sh "$app" | cut -f1), $copies paths from the Dockerfile) served a tenant on $(node --version) as $( [[ ${#run[@]} -gt 0 ]] && echo nobody || id -un ), passed its HEALTHCHECK and stopped cleanly"
