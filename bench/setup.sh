#!/usr/bin/env bash
# Installs what bench/run drives, skipping whatever is already there (idempotent).
#   docker-registry  distribution 2.8, as the upstream and as the proxy-mode competitor
#   nginx-light      serves the blob file from disk: the machine's limit
#   wrk              manifest GET requests per second
#   apache2-utils    ab: manifest HEAD requests per second (wrk 4.1 cannot do HEAD)
#   curl             blob throughput
# Runs apt-get only when something is missing; needs root (or sudo) in that case.
set -euo pipefail

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v ab >/dev/null 2>&1 || need+=(apache2-utils)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v node >/dev/null 2>&1 || { echo "bench/setup.sh: node is required (Node.js >= 20.19)" >&2; exit 1; }

if [ ${#need[@]} -gt 0 ]; then
  echo "bench/setup.sh: installing ${need[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  # The bench runs its own nginx on a loopback port; a system nginx the package may start is not used.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
exit 0
