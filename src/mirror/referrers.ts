// Referrers: the manifests whose `subject` is a digest (signatures, SBOMs, attestations), so that
// cosign and notation resolve through the mirror. Upstream's referrers API answers when it has
// one; an upstream without it (404, as distribution 2.8 answers) is read by the referrers tag
// schema: the index clients such as cosign and oras keep under the tag `sha256-<hex>`. No such
// tag means no referrers: an empty list, as the spec has it.
//
// The answer is kept per (repository, digest), never shared across repositories (an empty one only
// for a manifest pullcache holds, so made-up digests leave nothing behind), and revalidated
// like a tag (at most once per freshness window: referrers change as signatures are added). When
// upstream cannot be asked, the kept answer is served stale.

import { UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import { ANY_DIGEST, type RepoName, sha256 } from '../oci.js'
import type { IndexDb } from '../store/index-db.js'
import type { Upstream } from '../upstream/client.js'
import { asRegistryError, type Outcome } from './answers.js'
import type { Flights } from './flights.js'

/** One referrer, as the OCI image index lists it. */
export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  artifactType?: string
  annotations?: Record<string, string>
}

export interface ReferrersAnswer {
  descriptors: Descriptor[]
  cache: Outcome
}

export interface ReferrersLookupOptions {
  upstream: Upstream
  index: IndexDb
  log: Logger
  flights: Flights
  /** How long a tag is served without asking upstream; referrers use their fallback tag's. */
  freshnessFor: (repo: string, tag: string) => number
  /** A manifest pullcache holds, so that the fallback index costs no GET upstream when held. */
  cachedManifest: (digest: string) => { body: Buffer } | undefined
}

export class ReferrersLookup {
  private readonly opts: ReferrersLookupOptions

  constructor(opts: ReferrersLookupOptions) {
    this.opts = opts
  }

  async referrers(name: RepoName, digest: string, now = Date.now()): Promise<ReferrersAnswer> {
    const { upstream, index, log, flights } = this.opts
    const registry = upstream.registry
    const kept = index.listings.getReferrers(registry, name.upstream, digest)
    const keptList = kept === undefined ? undefined : parseKept(kept.body)
    if (kept && keptList) {
      if (now - kept.fetched_at < this.opts.freshnessFor(name.upstream, fallbackTag(digest))) {
        return { descriptors: keptList, cache: 'hit' }
      }
      // Upstream failed moments ago: do not make every client wait on it to fail again.
      if (upstream.isUnwell() || upstream.offline) return { descriptors: keptList, cache: 'stale' }
    }
    const key = `referrers\0${name.upstream}\0${digest}`
    const joined = flights.has(key)
    try {
      const descriptors = await flights.flight(key, (signal) => this.fetch(name, digest, signal))
      return { descriptors, cache: joined ? 'coalesced' : 'miss' }
    } catch (err) {
      if (keptList && err instanceof UpstreamError) {
        log.warn('mirror.stale_referrers', { repo: name.upstream, digest, error: err })
        return { descriptors: keptList, cache: 'stale' }
      }
      throw asRegistryError(err, 'NAME_UNKNOWN')
    }
  }

  private async fetch(name: RepoName, digest: string, signal: AbortSignal): Promise<Descriptor[]> {
    const { upstream, index } = this.opts
    const pages = await upstream.getReferrers(name.upstream, digest, signal)
    const descriptors =
      pages === undefined
        ? await this.fromTagSchema(name, digest, signal)
        : pages.flatMap((page) => descriptorsOf(page, `referrers of ${digest}`))
    // Junk must not grow the index: an empty list is kept only for a manifest pullcache holds;
    // for any other digest (anything a client may make up) upstream is asked again next time.
    if (descriptors.length > 0 || this.opts.cachedManifest(digest) !== undefined) {
      const body = Buffer.from(JSON.stringify(descriptors))
      index.listings.setReferrers(upstream.registry, name.upstream, digest, body)
    }
    return descriptors
  }

  /** The referrers tag schema: the index under `sha256-<hex>`, or none (no referrers). */
  private async fromTagSchema(name: RepoName, digest: string, signal: AbortSignal): Promise<Descriptor[]> {
    const { upstream } = this.opts
    const tag = fallbackTag(digest)
    try {
      // HEAD first (free on Docker Hub); the GET only for an index pullcache does not hold.
      const head = await upstream.headManifest(name.upstream, tag, signal)
      const held = head.digest === undefined ? undefined : this.opts.cachedManifest(head.digest)
      if (held) return descriptorsOf(held.body, `the ${tag} index`)
      const got = await upstream.getManifest(name.upstream, head.digest ?? tag, signal)
      const actual = sha256(got.bytes)
      if (
        (head.digest !== undefined && actual !== head.digest) ||
        (got.digest !== undefined && got.digest !== actual)
      ) {
        throw new UpstreamError('INVALID', `upstream sent a ${tag} index whose bytes do not match its digest`)
      }
      return descriptorsOf(got.bytes, `the ${tag} index`)
    } catch (err) {
      if (err instanceof UpstreamError && err.kind === 'NOT_FOUND') return []
      throw err
    }
  }
}

/** The tag under which the referrers tag schema keeps a digest's referrers: `<alg>-<ref>`. */
export function fallbackTag(digest: string): string {
  return digest.replace(':', '-')
}

/** The descriptors of an image index, with only the fields a referrers list carries. */
function descriptorsOf(bytes: Buffer, what: string): Descriptor[] {
  let parsed: unknown
  try {
    parsed = JSON.parse(bytes.toString('utf8'))
  } catch (err) {
    throw new UpstreamError('INVALID', `${what} is not JSON`, { cause: err })
  }
  const manifests = (parsed as { manifests?: unknown } | null)?.manifests
  if (manifests === undefined || manifests === null) return []
  if (!Array.isArray(manifests)) throw new UpstreamError('INVALID', `${what}: manifests is not a list`)
  const out: Descriptor[] = []
  for (const m of manifests as Record<string, unknown>[]) {
    if (typeof m !== 'object' || m === null) continue
    const { mediaType, digest, size, artifactType, annotations } = m
    if (typeof mediaType !== 'string' || typeof digest !== 'string' || !ANY_DIGEST.test(digest)) continue
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) continue
    const d: Descriptor = { mediaType, digest, size }
    if (typeof artifactType === 'string') d.artifactType = artifactType
    if (typeof annotations === 'object' && annotations !== null && !Array.isArray(annotations)) {
      const strings = Object.entries(annotations).filter(([, v]) => typeof v === 'string')
      if (strings.length > 0) d.annotations = Object.fromEntries(strings) as Record<string, string>
    }
    out.push(d)
  }
  return out
}

/** A kept answer, or undefined when the row cannot be read (it is then fetched again). */
function parseKept(body: Buffer): Descriptor[] | undefined {
  try {
    const list = JSON.parse(body.toString('utf8')) as unknown
    return Array.isArray(list) ? (list as Descriptor[]) : undefined
  } catch {
    return undefined
  }
}
