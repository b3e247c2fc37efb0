// What the fake upstream serves: repositories, their tags, manifests and blob links, and one global
// content-addressed blob table. Blobs are global (like distribution's blob store) because the CDN
// serves by digest alone; a repository only "has" a blob once it is linked to it, which is what the
// registry checks before it redirects.
import { randomBytes } from 'node:crypto'
import { sha256 } from './sha256.js'

export const MEDIA_TYPES = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  octetStream: 'application/octet-stream',
} as const

// Grammar from the OCI distribution spec; the fake rejects what Docker Hub would not route.
const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*'
export const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`)
export const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/
export const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/

export interface StoredManifest {
  bytes: Uint8Array
  mediaType: string
  digest: string
}

export interface Repo {
  // digest -> media type the blob was added with
  blobs: Map<string, string>
  manifests: Map<string, StoredManifest>
  tags: Map<string, string>
}

export interface AddedImage {
  manifestDigest: string
  manifest: Uint8Array
  mediaType: string
  configDigest: string
  config: Uint8Array
  layers: { digest: string; bytes: Uint8Array }[]
}

export class ContentStore {
  readonly #repos = new Map<string, Repo>()
  readonly #blobs = new Map<string, Uint8Array>()

  repo(name: string): Repo | undefined {
    return this.#repos.get(name)
  }

  blob(digest: string): Uint8Array | undefined {
    return this.#blobs.get(digest)
  }

  addBlob(repo: string, bytes: Uint8Array, mediaType: string = MEDIA_TYPES.octetStream): string {
    const digest = sha256(bytes)
    // Copy so a test that reuses or mutates its buffer cannot change what is served.
    if (!this.#blobs.has(digest)) this.#blobs.set(digest, Uint8Array.from(bytes))
    this.#ensure(repo).blobs.set(digest, mediaType)
    return digest
  }

  addManifest(repo: string, bytes: Uint8Array, mediaType: string, tag?: string): string {
    const digest = sha256(bytes)
    this.#ensure(repo).manifests.set(digest, { bytes: Uint8Array.from(bytes), mediaType, digest })
    if (tag !== undefined) this.setTag(repo, tag, digest)
    return digest
  }

  setTag(repo: string, tag: string, digest: string): void {
    if (!TAG_RE.test(tag)) throw new Error(`fake upstream: invalid tag ${JSON.stringify(tag)}`)
    const r = this.#ensure(repo)
    // A tag pointing at nothing is a test bug; fail where it was written, not in a 404 later.
    if (!r.manifests.has(digest)) throw new Error(`fake upstream: ${repo} has no manifest ${digest}`)
    r.tags.set(tag, digest)
  }

  deleteTag(repo: string, tag: string): void {
    this.#repos.get(repo)?.tags.delete(tag)
  }

  // Random layers, a minimal but well-formed image config whose diff_ids match the layers, and a
  // Docker schema 2 manifest: the shape Docker Hub serves for a single-platform tag.
  addImage(repo: string, tag: string, opts: { layers?: number; layerBytes?: number } = {}): AddedImage {
    const layerCount = opts.layers ?? 2
    const layerBytes = opts.layerBytes ?? 1024
    const layers = Array.from({ length: layerCount }, () => {
      const bytes = new Uint8Array(randomBytes(layerBytes))
      return { digest: this.addBlob(repo, bytes, MEDIA_TYPES.dockerLayer), bytes }
    })
    const configJson = {
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      // Unique per call so two images with the same layers still have distinct digests.
      created: new Date().toISOString(),
      comment: randomBytes(8).toString('hex'),
    }
    const config = new TextEncoder().encode(JSON.stringify(configJson))
    const configDigest = this.addBlob(repo, config, MEDIA_TYPES.dockerConfig)
    const manifestJson = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.dockerManifest,
      config: { mediaType: MEDIA_TYPES.dockerConfig, size: config.length, digest: configDigest },
      layers: layers.map((l) => ({
        mediaType: MEDIA_TYPES.dockerLayer,
        size: l.bytes.length,
        digest: l.digest,
      })),
    }
    // distribution indents with three spaces; keeping that makes the bytes look like Hub's.
    const manifest = new TextEncoder().encode(JSON.stringify(manifestJson, null, 3))
    const manifestDigest = this.addManifest(repo, manifest, MEDIA_TYPES.dockerManifest, tag)
    return { manifestDigest, manifest, mediaType: MEDIA_TYPES.dockerManifest, configDigest, config, layers }
  }

  #ensure(name: string): Repo {
    if (!NAME_RE.test(name)) throw new Error(`fake upstream: invalid repository name ${JSON.stringify(name)}`)
    let r = this.#repos.get(name)
    if (r === undefined) {
      r = { blobs: new Map(), manifests: new Map(), tags: new Map() }
      this.#repos.set(name, r)
    }
    return r
  }
}
