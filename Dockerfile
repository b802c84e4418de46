# tenantd on Node 22 (Node 24 works the same: --build-arg NODE_VERSION=24).
ARG NODE_VERSION=22
FROM node:${NODE_VERSION}-bookworm-slim AS build
# better-sqlite3 and the guard extension compile from source.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
COPY scripts ./scripts
COPY workers/guard ./workers/guard
RUN npm ci
COPY . .
# Compiled JavaScript: no TypeScript loader in the server (about 80 MB less RSS).
RUN node scripts/build-guard.mjs && npx tsc -p tsconfig.build.json && npm prune --omit=dev

FROM node:${NODE_VERSION}-bookworm-slim
WORKDIR /app
COPY --from=build /app /app
ENV TENANTD_LISTEN=0.0.0.0:7070 \
    TENANTD_DATA_DIR=/data \
    TENANTD_METRICS_LISTEN=0.0.0.0:9464
# glibc keeps memory that results in flight used (Query chunks, gRPC frames) unless its
# thresholds are fixed: with these, RSS returns to where it was after a burst of large results
# (bench/README.md, bench:query-memory: +170 % 30 s after the load without them, -15 % with).
ENV MALLOC_MMAP_THRESHOLD_=131072 \
    MALLOC_TRIM_THRESHOLD_=131072
VOLUME /data
EXPOSE 7070 9464
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s \
  CMD node -e "fetch('http://127.0.0.1:9464/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/src/main.js"]
CMD ["serve"]
