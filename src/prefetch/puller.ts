// Pulls an image through a pullcache endpoint the way a client does, so that pullcache caches it:
// the manifest by tag or digest, for an index only the manifests of the wanted platforms, then
// their config and layer blobs. Nothing is kept on this side: every body is hashed as it
// arrives, counted and discarded, and a digest or size that does not match fails the image.
// A blob the server says it already holds (a HEAD answered `X-Pullcache-Cache: hit`) is not
// downloaded again; everything else is.

import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import pLimit from 'p-limit'
import { Agent, type Dispatcher, request } from 'undici'
import { INDEX_TYPES, isDigest, MANIFEST_TYPES, MAX_MANIFEST_BYTES, sha256 } from '../oci.js'
import { formatPlatform, type Platform, pickPlatform } from './platform.js'
import type { ImageReference } from './reference.js'

const ACCEPT = MANIFEST_TYPES.join(', ')

const CACHE_HEADER = 'x-pullcache-cache'

export interface PullProgress {
  /** Blob bytes verified or known to be cached so far. */
  done: number
  /** Blob bytes of the image's selected platforms; 0 until the manifests are in. */
  total: number
}

export interface PullResult {
  reference: string
  /** What the reference resolved to: the manifest, or the index/manifest list. */
  digest: string
  mediaType: string
  /** Platforms fetched from an index; empty for a single-platform image. */
  platforms: string[]
  /** Platforms asked for that the index does not have. */
  missingPlatforms: string[]
  layers: number
  /** Config and layer blobs, each counted once. */
  blobs: number
  bytes: number
  /** Blob bytes that were not already in the cache. */
  fetchedBytes: number
  /** True when every manifest and blob was already cached. */
  cached: boolean
}

export class PullError extends Error {
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts)
    this.name = 'PullError'
  }
}

interface Descriptor {
  mediaType: string | null
  digest: string
  size: number
}

interface Fetched {
  digest: string
  mediaType: string
  body: Buffer
  cached: boolean
}

export interface PullerOptions {
  /** Base URL of a pullcache, e.g. http://127.0.0.1:5000. */
  server: string
  /** Blob downloads at once per image. */
  concurrency?: number
  /** Attempts per request when the connection fails or the server answers 5xx. */
  attempts?: number
}

export class Puller {
  private readonly server: string
  private readonly dispatcher: Agent
  private readonly concurrency: number
  private readonly attempts: number

  constructor(opts: PullerOptions) {
    this.server = opts.server.replace(/\/+$/, '')
    this.concurrency = opts.concurrency ?? 4
    this.attempts = opts.attempts ?? 3
    // Long layers: only the wait for headers has a deadline, and a stalled body.
    this.dispatcher = new Agent({ headersTimeout: 120_000, bodyTimeout: 120_000, connections: 16 })
  }

  async pull(
    ref: ImageReference,
    platforms: readonly Platform[],
    onProgress: (p: PullProgress) => void = () => {},
  ): Promise<PullResult> {
    const repo = ref.path
    const top = await this.manifest(repo, ref.digest ?? ref.tag!, ref.digest)
    let cached = top.cached
    const parsedTop = parseManifest(top)
    const images: { manifest: Fetched; parsed: ParsedImage }[] = []
    const fetchedPlatforms: string[] = []
    const missingPlatforms: string[] = []
    if (parsedTop.kind === 'index') {
      const chosen = new Set<Descriptor & { platform: Platform | null }>()
      for (const wanted of platforms) {
        const entry = pickPlatform(parsedTop.manifests, (m) => m.platform, wanted)
        if (entry === undefined) missingPlatforms.push(formatPlatform(wanted))
        else chosen.add(entry)
      }
      if (chosen.size === 0) {
        const available = parsedTop.manifests.flatMap((m) => (m.platform ? [formatPlatform(m.platform)] : []))
        throw new PullError(
          `no manifest for ${platforms.map(formatPlatform).join(', ')} (the image has ${available.join(', ') || 'no platforms'})`,
        )
      }
      for (const entry of chosen) {
        const child = await this.manifest(repo, entry.digest, entry.digest)
        cached &&= child.cached
        const parsed = parseManifest(child)
        if (parsed.kind !== 'image') throw new PullError(`${entry.digest}: an index inside an index`)
        images.push({ manifest: child, parsed })
        if (entry.platform) fetchedPlatforms.push(formatPlatform(entry.platform))
      }
    } else {
      images.push({ manifest: top, parsed: parsedTop })
    }

    const blobs = new Map<string, Descriptor>()
    const layers = new Set<string>()
    for (const { parsed } of images) {
      for (const d of [parsed.config, ...parsed.layers]) blobs.set(d.digest, d)
      for (const d of parsed.layers) layers.add(d.digest)
    }
    const progress: PullProgress = { done: 0, total: 0 }
    for (const d of blobs.values()) progress.total += d.size
    onProgress({ ...progress })
    let fetchedBytes = 0
    const limit = pLimit(this.concurrency)
    await Promise.all(
      [...blobs.values()].map((d) =>
        limit(async () => {
          const hit = await this.blob(repo, d, (n) => {
            progress.done += n
            onProgress({ ...progress })
          })
          if (!hit) {
            cached = false
            fetchedBytes += d.size
          }
        }),
      ),
    )
    return {
      reference: ref.canonical,
      digest: top.digest,
      mediaType: top.mediaType,
      platforms: fetchedPlatforms,
      missingPlatforms,
      layers: layers.size,
      blobs: blobs.size,
      bytes: progress.total,
      fetchedBytes,
      cached,
    }
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
  }

  /** GET a manifest, checking that its bytes hash to the digest asked for or announced. */
  private async manifest(repo: string, reference: string, expected: string | null): Promise<Fetched> {
    const url = `${this.server}/v2/${repo}/manifests/${reference}`
    return this.retrying(async () => {
      const res = await request(url, {
        method: 'GET',
        headers: { accept: ACCEPT },
        dispatcher: this.dispatcher,
      })
      if (res.statusCode !== 200) throw await httpError(res, `manifest ${repo}:${reference}`)
      const declared = Number(res.headers['content-length'] ?? 0)
      if (declared > MAX_MANIFEST_BYTES) {
        res.body.destroy()
        throw new PullError(`manifest ${repo}:${reference} is ${declared} bytes, over the 4 MiB limit`)
      }
      const body = Buffer.from(await res.body.arrayBuffer())
      const digest = sha256(body)
      const announced = header(res.headers, 'docker-content-digest')
      if ((expected !== null && digest !== expected) || (announced !== undefined && announced !== digest)) {
        throw new PullError(
          `manifest ${repo}:${reference}: the bytes hash to ${digest}, expected ${expected ?? announced}`,
        )
      }
      const contentType = header(res.headers, 'content-type')?.split(';')[0]?.trim() ?? ''
      return { digest, mediaType: contentType, body, cached: header(res.headers, CACHE_HEADER) === 'hit' }
    })
  }

  /**
   * Makes sure the server holds a blob; resolves true when it already did. Bytes are reported
   * as they are verified; a failed attempt takes back what it reported.
   */
  private async blob(repo: string, d: Descriptor, onBytes: (n: number) => void): Promise<boolean> {
    const url = `${this.server}/v2/${repo}/blobs/${d.digest}`
    const head = await this.retrying(async () => {
      const res = await request(url, { method: 'HEAD', dispatcher: this.dispatcher })
      await res.body.dump()
      return res
    })
    if (
      head.statusCode === 200 &&
      header(head.headers, CACHE_HEADER) === 'hit' &&
      Number(header(head.headers, 'content-length')) === d.size
    ) {
      onBytes(d.size)
      return true
    }
    return this.retrying(async () => {
      const res = await request(url, { method: 'GET', dispatcher: this.dispatcher })
      if (res.statusCode !== 200) throw await httpError(res, `blob ${d.digest}`)
      const hash = createHash('sha256')
      let received = 0
      try {
        for await (const chunk of res.body) {
          const buf = chunk as Buffer
          hash.update(buf)
          received += buf.length
          onBytes(buf.length)
          if (received > d.size)
            throw new PullError(`blob ${d.digest}: more than the ${d.size} bytes announced`)
        }
        const digest = `sha256:${hash.digest('hex')}`
        if (received !== d.size || digest !== d.digest) {
          throw new PullError(
            `blob ${d.digest}: received ${received} bytes hashing to ${digest}, expected ${d.size}`,
          )
        }
      } catch (err) {
        onBytes(-received)
        res.body.destroy()
        throw err
      }
      return header(res.headers, CACHE_HEADER) === 'hit'
    })
  }

  /** Runs `attempt` again after a network failure or a 5xx, with a short pause; not after a 4xx. */
  private async retrying<T>(attempt: () => Promise<T>): Promise<T> {
    for (let i = 1; ; i++) {
      try {
        return await attempt()
      } catch (err) {
        const permanent = err instanceof PullError && !(err instanceof RetryableError)
        if (permanent || i >= this.attempts) throw asPullError(err)
        await sleep(500 * 2 ** (i - 1))
      }
    }
  }
}

/** A 5xx: the server or its upstream is unwell, and the same request may well work in a moment. */
class RetryableError extends PullError {}

async function httpError(res: Dispatcher.ResponseData, what: string): Promise<PullError> {
  let detail = ''
  try {
    const text = await res.body.text()
    const parsed = JSON.parse(text) as { errors?: { code?: string; message?: string; detail?: unknown }[] }
    const first = parsed.errors?.[0]
    if (first) detail = `: ${first.code ?? ''} ${first.message ?? ''}`.trimEnd()
  } catch {
    // not an OCI error body; the status says enough
  }
  const message = `${what}: HTTP ${res.statusCode}${detail}`
  return res.statusCode >= 500 || res.statusCode === 429
    ? new RetryableError(message)
    : new PullError(message)
}

function asPullError(err: unknown): PullError {
  if (err instanceof PullError) return new PullError(err.message)
  const e = err as Error & { code?: string }
  return new PullError(`${e.code ? `${e.code}: ` : ''}${e.message}`, { cause: err })
}

function header(headers: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const value = headers[name]
  return Array.isArray(value) ? value[0] : value
}

type ParsedImage = { kind: 'image'; config: Descriptor; layers: Descriptor[] }
type ParsedIndex = { kind: 'index'; manifests: (Descriptor & { platform: Platform | null })[] }

function parseManifest(m: Fetched): ParsedImage | ParsedIndex {
  let json: { mediaType?: unknown; config?: unknown; layers?: unknown; manifests?: unknown }
  try {
    json = JSON.parse(m.body.toString('utf8'))
  } catch {
    throw new PullError(`manifest ${m.digest} is not JSON`)
  }
  const mediaType = typeof json.mediaType === 'string' ? json.mediaType : m.mediaType
  if (INDEX_TYPES.has(mediaType) || Array.isArray(json.manifests)) {
    if (!Array.isArray(json.manifests)) throw new PullError(`index ${m.digest} has no manifests`)
    return {
      kind: 'index',
      manifests: json.manifests.map((entry: unknown) => {
        const d = descriptor(entry, m.digest)
        const p = (entry as { platform?: { os?: unknown; architecture?: unknown; variant?: unknown } })
          .platform
        const platform =
          p && typeof p.os === 'string' && typeof p.architecture === 'string'
            ? {
                os: p.os,
                architecture: p.architecture,
                variant: typeof p.variant === 'string' ? p.variant : '',
              }
            : null
        return { ...d, platform }
      }),
    }
  }
  if (json.config === undefined || !Array.isArray(json.layers)) {
    throw new PullError(
      `manifest ${m.digest} (${mediaType || 'no media type'}) is not an image manifest this client knows`,
    )
  }
  return {
    kind: 'image',
    config: descriptor(json.config, m.digest),
    layers: json.layers.map((l: unknown) => descriptor(l, m.digest)),
  }
}

function descriptor(value: unknown, parent: string): Descriptor {
  const d = value as { mediaType?: unknown; digest?: unknown; size?: unknown } | null
  if (
    typeof d !== 'object' ||
    d === null ||
    typeof d.digest !== 'string' ||
    !isDigest(d.digest) ||
    typeof d.size !== 'number' ||
    !Number.isSafeInteger(d.size) ||
    d.size < 0
  ) {
    throw new PullError(`manifest ${parent} has a descriptor without a sha256 digest and size`)
  }
  return { mediaType: typeof d.mediaType === 'string' ? d.mediaType : null, digest: d.digest, size: d.size }
}
