// The registry read API under /v2/: the version check, manifests, blobs, tags/list, referrers and
// _catalog, with
// the checks every one of them passes first (the ?ns= namespace, what an anonymous client may
// read). Manifests and small answers go through Hono; blob bodies are in blob-route.ts.
// Errors are thrown as RegistryError and rendered by the app.

import { type Context, Hono } from 'hono'
import { RegistryError } from '../errors.js'
import { acceptedTypes } from '../mirror/manifest.js'
import type { Mirror } from '../mirror/mirror.js'
import type { Mirrors } from '../mirror/mirrors.js'
import { ANY_DIGEST, isRegistryHost, MEDIA_TYPES, SHA256_DIGEST } from '../oci.js'
import { type Access, challenge, REALM, type RegistryEnv, type Viewer } from './access.js'
import { blob, matchesEtag } from './blob-route.js'
import { CACHE_HEADER, noteOf } from './outcome.js'
import { parseDigest, parseName, parseReference, type RepoName } from './reference.js'

/** Manifests, blobs and tags/list: the last path segments after the repository name. */
const ROUTE = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$|^\/v2\/(.+)\/tags\/list$/
/** The referrers API (OCI distribution 1.1): the manifests whose subject is a digest. */
const REFERRERS = /^\/v2\/(.+)\/referrers\/([^/]+)$/
/** _catalog pages: the default size, and the most one request may ask for. */
const CATALOG_PAGE = 100
const CATALOG_MAX = 1000

export function registryRoutes(mirrors: Mirrors, access: Access): Hono<RegistryEnv> {
  const registry = new Hono<RegistryEnv>()

  registry.on(['GET', 'HEAD'], ['/v2', '/v2/'], (c) =>
    // An anonymous client is welcome (dockerd, which cannot send credentials to a mirror, reads
    // only a 401's challenge), but containers/image reads the challenge on any answer and then
    // sends the credentials it has for this host with every request.
    c.json(
      {},
      200,
      access.hasAccounts && c.get('viewer').user === null
        ? { 'WWW-Authenticate': `Basic realm="${REALM}"` }
        : {},
    ),
  )

  registry.all('/v2/*', async (c) => {
    // The raw path: percent-escapes stay escaped, so they fail the name grammar instead of
    // turning into '/' or '..' after we looked.
    const path = rawPath(c.req.url)
    const method = c.req.method
    if (method !== 'GET' && method !== 'HEAD') {
      // Push, delete and uploads: a mirror never forwards them, whatever the path.
      throw new RegistryError(
        'UNSUPPORTED',
        { method, reason: 'pullcache is a read-only mirror' },
        { headers: { Allow: 'GET, HEAD' } },
      )
    }
    const m = ROUTE.exec(path)
    const referrers = m ? null : REFERRERS.exec(path)
    const catalog = path === '/v2/_catalog'
    if (!m && !referrers && !catalog) throw new RegistryError('NOT_FOUND', { path })
    // containerd names the registry it means in ?ns=. Answering for another registry would
    // serve Docker Hub's image of the same name; a 404 sends containerd to its next host.
    const ns = new URL(c.req.url).searchParams.get('ns')
    const nsMirror = ns === null ? mirrors.root : mirrors.forHost(ns)
    if (nsMirror === undefined) throw notMirrored(mirrors, { ns: ns ?? '' })
    const route = (raw: string) => {
      const found = routeName(mirrors, nsMirror, ns, raw)
      noteOf(c.env.outgoing).mirror = found.mirror
      return found
    }
    const viewer = c.get('viewer')
    // The catalog lists every repository held, each upstream's under its own names.
    if (catalog) return catalogPage(c, mirrors.root, viewer, method)
    if (referrers) {
      // The spec defines GET only; a HEAD could not say how many referrers there are.
      if (method !== 'GET') {
        throw new RegistryError(
          'UNSUPPORTED',
          { method, reason: 'referrers are listed by GET' },
          { headers: { Allow: 'GET' } },
        )
      }
      const { mirror, name } = route(referrers[1]!)
      const digest = parseReferrersDigest(referrers[2]!)
      await mayRead(viewer, mirror, name)
      return referrersList(c, mirror, name, digest)
    }
    if (!m) throw new RegistryError('NOT_FOUND', { path })
    if (m[4] !== undefined) {
      const { mirror, name } = route(m[4])
      await mayRead(viewer, mirror, name)
      return tagList(c, mirror, name, method)
    }
    const { mirror, name } = route(m[1]!)
    await mayRead(viewer, mirror, name)
    if (m[2] === 'manifests') return manifest(c, mirror, name, m[3]!, method)
    const digest = parseDigest(m[3]!, 'BLOB_UNKNOWN')
    await mayReadDigest(viewer, mirror, name, digest, 'blob')
    return blob(c, mirror, name, digest, method)
  })

  return registry
}

/**
 * The mirror and the name a request's repository path means. A first component that is a
 * registry host ("ghcr.io/org/app", what a registries.conf location with a path sends) names
 * the upstream, and the rest is the name there; otherwise `?ns=` does, or the root upstream.
 * The two must agree when both are given. An upstream that is not configured is never asked.
 */
function routeName(
  mirrors: Mirrors,
  nsMirror: Mirror,
  ns: string | null,
  raw: string,
): { mirror: Mirror; name: RepoName } {
  const slash = raw.indexOf('/')
  const first = slash === -1 ? '' : raw.slice(0, slash)
  let mirror = nsMirror
  let rest = raw
  if (isRegistryHost(first)) {
    const prefixed = mirrors.forHost(first)
    if (prefixed === undefined || (ns !== null && prefixed !== nsMirror)) {
      throw notMirrored(mirrors, { ...(ns === null ? {} : { ns }), registry: first })
    }
    mirror = prefixed
    rest = raw.slice(slash + 1)
  }
  const parsed = parseName(rest, mirror.upstream.libraryPrefix)
  // In the index (and to the client, in Link headers) the name keeps its registry.
  return {
    mirror,
    name: { client: raw, upstream: `${mirror.upstream.namePrefix}${parsed.upstream}` },
  }
}

/** A registry pullcache does not mirror: 404, so containerd moves on to its next host. */
function notMirrored(mirrors: Mirrors, detail: { ns?: string; registry?: string }): RegistryError {
  return new RegistryError('NAME_UNKNOWN', {
    ...detail,
    reason: `pullcache mirrors ${mirrors.hosts.join(', ')} only`,
  })
}

/**
 * An anonymous client reads only what anonymous pulls upstream may read (mirror/visibility.ts):
 * a repository they cannot read asks for an account. Signed-in clients have the account's access.
 */
async function mayRead(viewer: Viewer, mirror: Mirror, name: RepoName): Promise<void> {
  if (viewer.user !== null) return
  if (!(await mirror.visibility.repoReadable(name.upstream))) {
    throw challenge(`anonymous pulls cannot read ${name.client}`)
  }
}

/** A digest an anonymous client may not have under this name is, to it, not there. */
async function mayReadDigest(
  viewer: Viewer,
  mirror: Mirror,
  name: RepoName,
  digest: string,
  kind: 'blob' | 'manifest',
): Promise<void> {
  if (viewer.user !== null) return
  if (!(await mirror.anonymousMayRead(name, digest, kind))) {
    throw new RegistryError(kind === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN', {
      repository: name.client,
      digest,
    })
  }
}

export function rawPath(url: string): string {
  const start = url.indexOf('/', url.indexOf('//') + 2)
  const end = url.indexOf('?', start)
  return url.slice(start, end === -1 ? undefined : end)
}

async function manifest(
  c: Context<RegistryEnv>,
  mirror: Mirror,
  name: RepoName,
  raw: string,
  method: 'GET' | 'HEAD',
) {
  const ref = parseReference(raw)
  if (ref.kind === 'digest') await mayReadDigest(c.get('viewer'), mirror, name, ref.digest, 'manifest')
  const note = noteOf(c.env.outgoing)
  note.kind = 'manifest'
  note.name = name
  if (ref.kind === 'tag') note.tag = ref.tag
  const found =
    ref.kind === 'digest'
      ? await mirror.manifestByDigest(name, ref.digest, method)
      : await mirror.manifestByTag(name, ref.tag, method, acceptedTypes(c.req.header('accept')))
  note.cache = found.cache
  note.digest = found.digest
  const headers: Record<string, string> = {
    'Content-Type': found.mediaType,
    'Content-Length': String(found.size),
    'Docker-Content-Digest': found.digest,
    ETag: `"${found.digest}"`,
    [CACHE_HEADER]: found.cache,
  }
  if (found.cache === 'stale') headers.Warning = '110 pullcache "Response is Stale"'
  // How long ago upstream confirmed the tag: a site pullcache below starts its window from then.
  if (found.checkedAt !== undefined)
    headers.Age = String(Math.max(0, Math.floor((Date.now() - found.checkedAt) / 1000)))
  const notModified = matchesEtag(c.req.header('if-none-match'), found.digest)
  const sendBody = method === 'GET' && !notModified && found.bytes !== undefined
  if (notModified)
    return new Response(null, { status: 304, headers: { ETag: headers.ETag!, [CACHE_HEADER]: found.cache } })
  return new Response(sendBody ? found.bytes! : null, { status: 200, headers })
}

async function tagList(c: Context<RegistryEnv>, mirror: Mirror, name: RepoName, method: 'GET' | 'HEAD') {
  const url = new URL(c.req.url)
  const n = url.searchParams.get('n')
  if (n !== null && !/^\d{1,9}$/.test(n)) throw new RegistryError('PAGINATION_NUMBER_INVALID', { n })
  const last = url.searchParams.get('last')
  // Only the parameters that change the answer go upstream, in a stable order (also the key
  // under which the answer is kept for when upstream is down).
  const query = new URLSearchParams()
  if (n !== null) query.set('n', n)
  if (last !== null) query.set('last', last)
  const note = noteOf(c.env.outgoing)
  note.kind = 'tags'
  note.name = name
  const found = await mirror.tagList(name, query.toString())
  note.cache = found.cache
  const headers: Record<string, string> = {
    'Content-Type': 'application/json',
    'Content-Length': String(found.bytes.length),
    [CACHE_HEADER]: found.cache,
  }
  if (found.cache === 'stale') headers.Warning = '110 pullcache "Response is Stale"'
  const next = found.link ? nextLink(found.link, name.client) : undefined
  if (next) headers.Link = next
  return new Response(method === 'GET' ? found.bytes : null, { status: 200, headers })
}

/** Upstream's Link names upstream's path; the client must get ours, with its own repo name. */
function nextLink(link: string, clientName: string): string | undefined {
  const m = /<([^>]*)>\s*;\s*rel="?next"?/i.exec(link)
  if (!m) return undefined
  const q = m[1]!.indexOf('?')
  if (q === -1) return undefined
  const params = new URLSearchParams(m[1]!.slice(q + 1))
  const out = new URLSearchParams()
  for (const key of ['n', 'last']) {
    const v = params.get(key)
    if (v !== null) out.set(key, v)
  }
  return `</v2/${clientName}/tags/list?${out.toString()}>; rel="next"`
}

/**
 * A referrers digest: malformed is DIGEST_INVALID (400). So is a well-formed one of an algorithm
 * pullcache does not store: the spec forbids a 404 from a registry with the referrers API.
 */
function parseReferrersDigest(raw: string): string {
  if (SHA256_DIGEST.test(raw)) return raw
  throw new RegistryError('DIGEST_INVALID', {
    digest: raw,
    ...(ANY_DIGEST.test(raw) ? { reason: 'only sha256 digests are supported' } : {}),
  })
}

async function referrersList(c: Context<RegistryEnv>, mirror: Mirror, name: RepoName, digest: string) {
  const note = noteOf(c.env.outgoing)
  // Accounted with tags/list: a list answer, revalidated like a tag, that is not content.
  note.kind = 'tags'
  note.name = name
  const found = await mirror.referrers(name, digest)
  note.cache = found.cache
  const artifactType = new URL(c.req.url).searchParams.get('artifactType')
  const manifests =
    artifactType === null
      ? found.descriptors
      : found.descriptors.filter((d) => d.artifactType === artifactType)
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests }))
  const headers: Record<string, string> = {
    'Content-Type': MEDIA_TYPES.ociIndex,
    'Content-Length': String(bytes.length),
    [CACHE_HEADER]: found.cache,
  }
  if (artifactType !== null) headers['OCI-Filters-Applied'] = 'artifactType'
  if (found.cache === 'stale') headers.Warning = '110 pullcache "Response is Stale"'
  return new Response(bytes, { status: 200, headers })
}

/**
 * The repositories pullcache holds, as distribution's _catalog pages them: `n` (default 100, at
 * most 1000) after `last`, with a Link to the next page. Anonymous viewers see only what
 * anonymous pulls may read.
 */
function catalogPage(c: Context<RegistryEnv>, mirror: Mirror, viewer: Viewer, method: 'GET' | 'HEAD') {
  const url = new URL(c.req.url)
  const nParam = url.searchParams.get('n')
  if (nParam !== null && !/^\d{1,9}$/.test(nParam))
    throw new RegistryError('PAGINATION_NUMBER_INVALID', { n: nParam })
  const n = Math.min(nParam === null ? CATALOG_PAGE : Number(nParam), CATALOG_MAX)
  const last = url.searchParams.get('last') ?? ''
  const page = mirror.catalog(last, n, viewer.user === null)
  const bytes = Buffer.from(JSON.stringify({ repositories: page.repositories }))
  const headers: Record<string, string> = {
    'Content-Type': 'application/json',
    'Content-Length': String(bytes.length),
  }
  if (page.next !== undefined) {
    const query = new URLSearchParams({ last: page.next, n: String(n) })
    headers.Link = `</v2/_catalog?${query.toString()}>; rel="next"`
  }
  return new Response(method === 'GET' ? bytes : null, { status: 200, headers })
}
