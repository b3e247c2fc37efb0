#!/usr/bin/env bash
# Installs what pullcache's tests need on Debian or Ubuntu: a real upstream registry
# (distribution, Debian package docker-registry), real clients (skopeo, dockerd from docker.io,
# containerd's ctr), apache2-utils' htpasswd for client accounts, a browser for the status
# page's test (chromium), nginx as a load balancer, an S3 server (OpenStack Swift's S3 API with
# memcached, started by test/support/s3-server.sh), a second one with compare-and-swap (Ceph RGW,
# test/support/ceph-rgw.sh), and the build tools for better-sqlite3's
# native addon.
# Packages already present are not installed again; nothing is downloaded from outside the
# distribution's archive.
set -euo pipefail

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v dockerd >/dev/null || need+=(docker.io)
command -v containerd >/dev/null || need+=(containerd)
command -v ctr >/dev/null || need+=(containerd)
# The status page's browser test (test/e2e/status-page.test.ts) drives Debian's chromium.
command -v chromium >/dev/null || need+=(chromium)
# The real `htpasswd -B` makes the client accounts file in the access tests.
command -v htpasswd >/dev/null || need+=(apache2-utils)
# S3 storage's tests run a real S3 server: Swift's proxy with its s3api middleware, and memcached.
[ -f /usr/lib/python3/dist-packages/swift/common/middleware/s3api/s3api.py ] || need+=(python3-swift)
command -v memcached >/dev/null || need+=(memcached)
# The evictor's lease is tested on a store with atomic compare-and-swap: Ceph RADOS Gateway, one
# monitor, one OSD and radosgw (test/support/ceph-rgw.sh; ceph-common has the tools it runs).
command -v ceph-mon >/dev/null || need+=(ceph-mon)
command -v ceph-osd >/dev/null || need+=(ceph-osd)
command -v radosgw >/dev/null || need+=(radosgw)
command -v ceph >/dev/null || need+=(ceph-common)
command -v openssl >/dev/null || need+=(openssl)
# nginx as the load balancer in front of several nodes (test/e2e/cluster-nginx.test.ts runs its
# own on a loopback port; a system nginx the package may start is not used). Debian puts it in
# /usr/sbin, which a non-root PATH may lack.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v make >/dev/null || need+=(make)
command -v g++ >/dev/null || need+=(g++)
command -v python3 >/dev/null || need+=(python3)

if [ "${#need[@]}" -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "prereqs: installing ${need[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Node.js does not come from here: distributions other than Debian 13 package one too old.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "prereqs: Node.js >= 20.19 with npm is needed (22 or 24 LTS recommended); README.md, Quick start, says how to get it" >&2
  exit 1
fi
node -e '
  const [major, minor] = process.versions.node.split(".").map(Number)
  if (major < 20 || (major === 20 && minor < 19)) {
    console.error(`prereqs: Node.js >= 20.19 is needed, this is ${process.version}; README.md, Quick start, says how to get a newer one`)
    process.exit(1)
  }'
echo "prereqs: ok (node $(node --version), $(docker-registry --version 2>/dev/null | head -1), skopeo $(skopeo --version | awk "{print \$3}"))"
