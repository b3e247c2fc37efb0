// Test data for the bench, written straight into distribution's filesystem storage layout, so no
// push (and no skopeo) is needed:
//
//   <root>/docker/registry/v2/blobs/sha256/<2 hex>/<64 hex>/data                 every blob and manifest
//   <root>/docker/registry/v2/repositories/<repo>/_layers/sha256/<hex>/link      "sha256:<hex>"
//   <root>/docker/registry/v2/repositories/<repo>/_manifests/revisions/sha256/<hex>/link
//   <root>/docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link
//   <root>/docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/index/sha256/<hex>/link
//
// Images:
//   library/big:latest    Docker schema2 manifest: a small config and `1 + coldCount` random layers of
//                         `bigSize` bytes each: the first is the blob every warm measurement reads, each
//                         other one is GET once by each mirror, so every cold measurement meets a blob
//                         the mirror has never seen without restarting it (a restart would also measure
//                         the JIT warming up, which a long-running mirror has long done)
//   library/small:latest  Docker schema2 manifest: a small config and one 4 KiB layer
import { createHash, randomFillSync } from 'node:crypto'
import { closeSync, linkSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs'
import { dirname, join } from 'node:path'

const MEDIA = {
  manifest: 'application/vnd.docker.distribution.manifest.v2+json',
  config: 'application/vnd.docker.container.image.v1+json',
  layer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
}

/** Writes `size` random bytes to `path`; returns the sha256 digest. */
export function writeRandomFile(path, size) {
  const hash = createHash('sha256')
  const chunk = Buffer.allocUnsafe(4 * 1024 * 1024)
  const fd = openSync(path, 'w')
  try {
    for (let left = size; left > 0; ) {
      const n = Math.min(left, chunk.length)
      const part = n === chunk.length ? chunk : chunk.subarray(0, n)
      randomFillSync(part)
      hash.update(part)
      for (let off = 0; off < n; ) off += writeSync(fd, part, off, n - off)
      left -= n
    }
  } finally {
    closeSync(fd)
  }
  return `sha256:${hash.digest('hex')}`
}

const sha256 = (bytes) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

function writeFileMkdir(path, data) {
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, data)
}

class RegistryLayout {
  constructor(root) {
    this.v2 = join(root, 'docker', 'registry', 'v2')
  }
  blobData(digest) {
    const hex = digest.slice('sha256:'.length)
    return join(this.v2, 'blobs', 'sha256', hex.slice(0, 2), hex, 'data')
  }
  putBytes(digest, bytes) {
    writeFileMkdir(this.blobData(digest), bytes)
  }
  /** Hard-links a file already on disk (same filesystem) as a blob, so 200 MB is not copied. */
  putFile(digest, path) {
    const to = this.blobData(digest)
    mkdirSync(dirname(to), { recursive: true })
    linkSync(path, to)
  }
  link(repo, digest) {
    const hex = digest.slice('sha256:'.length)
    writeFileMkdir(join(this.v2, 'repositories', repo, '_layers', 'sha256', hex, 'link'), digest)
  }
  tag(repo, tag, manifestBytes) {
    const digest = sha256(manifestBytes)
    const hex = digest.slice('sha256:'.length)
    this.putBytes(digest, manifestBytes)
    const m = join(this.v2, 'repositories', repo, '_manifests')
    writeFileMkdir(join(m, 'revisions', 'sha256', hex, 'link'), digest)
    writeFileMkdir(join(m, 'tags', tag, 'current', 'link'), digest)
    writeFileMkdir(join(m, 'tags', tag, 'index', 'sha256', hex, 'link'), digest)
    return digest
  }
}

function image(layout, repo, tag, layers) {
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/true'] },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      history: layers.map(() => ({ created_by: 'pullcache bench' })),
    }),
  )
  const configDigest = sha256(config)
  layout.putBytes(configDigest, config)
  layout.link(repo, configDigest)
  for (const l of layers) layout.link(repo, l.digest)
  const manifest = Buffer.from(
    JSON.stringify(
      {
        schemaVersion: 2,
        mediaType: MEDIA.manifest,
        config: { mediaType: MEDIA.config, size: config.length, digest: configDigest },
        layers: layers.map((l) => ({ mediaType: MEDIA.layer, size: l.size, digest: l.digest })),
      },
      null,
      3,
    ),
  )
  const digest = layout.tag(repo, tag, manifest)
  return { repo, tag, digest, size: manifest.length }
}

/**
 * Builds the upstream registry's storage under `storageRoot` and the random blob files in `blobDir`
 * (which stay on disk; nginx serves the first; the registry's copies are hard links to them).
 */
export function buildUpstreamData(storageRoot, blobDir, bigSize, coldCount) {
  const layout = new RegistryLayout(storageRoot)
  const blobs = []
  for (let i = 0; i <= coldCount; i++) {
    const path = join(blobDir, `blob-${i}`)
    const digest = writeRandomFile(path, bigSize)
    layout.putFile(digest, path)
    blobs.push({ repo: 'library/big', digest, size: bigSize, path })
  }
  const big = image(
    layout,
    'library/big',
    'latest',
    blobs.map((b) => ({ digest: b.digest, size: b.size })),
  )

  const small = Buffer.allocUnsafe(4096)
  randomFillSync(small)
  const smallDigest = sha256(small)
  layout.putBytes(smallDigest, small)
  const smallImage = image(layout, 'library/small', 'latest', [{ digest: smallDigest, size: small.length }])
  return {
    blob: blobs[0],
    coldBlobs: blobs.slice(1),
    bigImage: big,
    smallImage,
  }
}
