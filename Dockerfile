# syntax=docker/dockerfile:1
# pullcache as a container image. Not built or run by CI: the development machines have no Docker
# engine, so this file was only linted and reviewed (README, "Docker image").
#
#   docker build -t pullcache .
#   docker run -d --name pullcache -p 5000:5000 -v pullcache:/var/lib/pullcache \
#     --stop-timeout 30 pullcache
#
# --stop-timeout: pullcache drains for up to 10 s on SIGTERM, which is also docker stop's default
# before SIGKILL; give it room so that it always exits on its own.

# Node 24, an LTS line with years of support left (Node 20 reached its end of life in April
# 2026). pullcache runs on any Node >= 20.19, so node:22-bookworm-slim works as well.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
# better-sqlite3 builds its native addon from source when no prebuilt binary can be downloaded
# for this platform; node-gyp then needs a compiler, make and Python. nodedir points it at the
# image's own Node headers, so the build never has to download them.
RUN apt-get update \
  && apt-get install -y --no-install-recommends g++ make python3 \
  && rm -rf /var/lib/apt/lists/*
ENV npm_config_nodedir=/usr/local
WORKDIR /src
# Dependencies first, so that editing src/ does not reinstall them. npm ci installs exactly
# package-lock.json and fails if it does not match package.json, as in .ci/run.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
  PULLCACHE_DATA_DIR=/var/lib/pullcache \
  PULLCACHE_LISTEN=:5000
WORKDIR /opt/pullcache
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY conf ./conf
# The data dir exists and belongs to the unprivileged user before VOLUME, so a new named volume
# starts out writable by it. "node" (uid 1000) comes with the official image.
RUN mkdir -p /var/lib/pullcache && chown node:node /var/lib/pullcache
USER node
VOLUME /var/lib/pullcache
EXPOSE 5000
# SIGTERM drains: stop accepting, let responses finish, leave only verified blobs in the store.
STOPSIGNAL SIGTERM
# No curl in the slim image: Node's fetch, on the port PULLCACHE_LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "const port = (process.env.PULLCACHE_LISTEN || ':5000').split(':').pop(); fetch(`http://127.0.0.1:${port}/_pullcache/healthz`, { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# The node flags are npm start's (package.json; why in systemd/pullcache.service).
ENTRYPOINT ["node", "--max-semi-space-size=2", "--liftoff-only", "/opt/pullcache/dist/main.js"]
CMD ["serve"]
