// The OCI referrers API upstream (distribution spec 1.1): the index pages that list the manifests
// whose subject is a digest, Link pages followed on upstream's own origin. A registry with the API
// never answers 404 (it lists nothing instead); a 404 means it has no such API (distribution 2.8
// answers its plain "404 page not found"), and the caller falls back to the referrers tag schema.

import { UpstreamError } from '../errors.js'
import { MAX_MANIFEST_BYTES } from '../oci.js'
import { header, type Response, readLimited } from './response.js'

/** Pages followed per answer: the work one request may cause upstream stays bounded. */
const MAX_PAGES = 16

export interface ReferrersExchange {
  origin: URL
  /** One authorized GET of a path on upstream's origin. */
  send: (path: string) => Promise<Response>
  /** A non-success answer as an UpstreamError (its body read, upstream's state told). */
  failure: (res: Response, what: string) => Promise<UpstreamError>
}

export async function fetchReferrers(
  repo: string,
  digest: string,
  upstream: ReferrersExchange,
): Promise<Buffer[] | undefined> {
  const pages: Buffer[] = []
  let path = `/v2/${repo}/referrers/${digest}`
  for (;;) {
    const res = await upstream.send(path)
    if (res.statusCode === 404 && pages.length === 0) {
      await res.body.dump()
      return undefined
    }
    if (res.statusCode !== 200) throw await upstream.failure(res, `GET referrers ${repo}@${digest}`)
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES)
    if (bytes === undefined)
      throw new UpstreamError('INVALID', `referrers of ${repo}@${digest}: a page larger than 4 MiB`)
    pages.push(bytes)
    const next = nextPage(header(res.headers, 'link'), upstream.origin)
    if (next === undefined || pages.length >= MAX_PAGES) return pages
    path = next
  }
}

/** The path and query of a `Link: <...>; rel="next"` on upstream's own origin, if there is one. */
function nextPage(link: string | undefined, origin: URL): string | undefined {
  const target = link === undefined ? undefined : /<([^>]*)>\s*;\s*rel="?next"?/i.exec(link)?.[1]
  if (target === undefined) return undefined
  let url: URL
  try {
    url = new URL(target, origin)
  } catch {
    return undefined
  }
  return url.origin === origin.origin ? url.pathname + url.search : undefined
}
