# tenantd on Node 22 (Node 24 works the same: --build-arg NODE_VERSION=24).
ARG NODE_VERSION=22

# Build: every dependency, the native addon, the guard extension, the
# descriptor set (buf) and the compiled JavaScript.
FROM node:${NODE_VERSION}-bookworm-slim AS build
# better-sqlite3 and the guard extension compile from source.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
COPY scripts ./scripts
COPY workers/guard ./workers/guard
COPY proto ./proto
# postinstall builds build/tenantd_guard.so and build/tenantd.binpb.
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build \
  # Production dependencies only from here on: no tsx, esbuild, TypeScript, buf or vitest.
  && npm prune --omit=dev --no-audit --no-fund \
  && test ! -e node_modules/tsx && test ! -e node_modules/esbuild

# Runtime: compiled JavaScript and what it reads at run time, owned by root
# and run as the unprivileged `node` user (uid 1000).
FROM node:${NODE_VERSION}-bookworm-slim
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/build ./build
COPY --from=build /app/proto ./proto
COPY --from=build /app/workers/bootstrap.mjs /app/workers/taskBootstrap.mjs ./workers/
RUN mkdir -p /data && chown node:node /data && chmod 700 /data
ENV NODE_ENV=production \
    TENANTD_LISTEN=0.0.0.0:7070 \
    TENANTD_DATA_DIR=/data \
    TENANTD_METRICS_LISTEN=0.0.0.0:9464
# glibc keeps memory that results in flight used (Query chunks, gRPC frames) unless its
# thresholds are fixed: with these, RSS returns to where it was after a burst of large results
# (bench/README.md, bench:query-memory: +170 % 30 s after the load without them, -15 % with).
ENV MALLOC_MMAP_THRESHOLD_=131072 \
    MALLOC_TRIM_THRESHOLD_=131072
USER node
VOLUME /data
EXPOSE 7070 9464
# /readyz over HTTPS when --metrics-tls is on (self-signed CAs: no verification from inside).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s \
  CMD node -e "const s=process.env.TENANTD_METRICS_TLS==='on';(s?require('node:https'):require('node:http')).get({host:'127.0.0.1',port:9464,path:'/readyz',rejectUnauthorized:false},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))"
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/src/main.js"]
CMD ["serve"]
