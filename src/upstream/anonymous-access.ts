// What an anonymous pull may read upstream, asked in ways that never count as a pull: the access
// an anonymous token grants, an anonymous tags/list of one tag, an anonymous HEAD by digest.
// mirror/visibility.ts decides from these which cached content an anonymous client may get.

import { UpstreamError } from '../errors.js'
import { MANIFEST_TYPES } from '../oci.js'
import { jwtGrantsPull } from './auth.js'
import { isRedirect, type Response } from './response.js'
import type { TokenExchange } from './token-exchange.js'

export interface AnonymousExchange {
  auth: Pick<TokenExchange, 'challenge' | 'discoverChallenge' | 'token'>
  /** One anonymous request of a path on upstream's origin. */
  send: (path: string, method: 'GET' | 'HEAD', headers: Record<string, string>) => Promise<Response>
  /** A non-success answer as an UpstreamError (its body read, upstream's state told). */
  failure: (res: Response, what: string) => Promise<UpstreamError>
}

/**
 * Whether an anonymous pull may read the repository. Asks the token service for an anonymous
 * pull token and reads the access it grants (Docker Hub's tokens are JWTs whose `access` claim
 * lists the granted actions; token requests do not count as pulls). With an opaque token, or
 * no token service, an anonymous tags/list of one tag decides: that is not a pull either.
 * Throws UpstreamError when upstream gives no answer.
 */
export async function anonymousAccess(
  repo: string,
  upstream: AnonymousExchange,
): Promise<'public' | 'private'> {
  const { auth } = upstream
  const challenge = auth.challenge ?? (await auth.discoverChallenge())
  if (challenge?.scheme === 'bearer') {
    let token: string
    try {
      token = await auth.token(challenge, `repository:${repo}:pull`, 'anonymous')
    } catch (err) {
      // A token service that refuses anonymous callers outright grants them nothing.
      if (err instanceof UpstreamError && err.kind === 'UNAUTHORIZED') return 'private'
      throw err
    }
    const granted = jwtGrantsPull(token, repo)
    if (granted !== undefined) return granted ? 'public' : 'private'
  }
  const res = await upstream.send(`/v2/${repo}/tags/list?n=1`, 'GET', {})
  if (res.statusCode === 200) {
    await res.body.dump()
    return 'public'
  }
  // Docker Hub answers 401 for a repository that is private or does not exist; either way an
  // anonymous pull cannot read it.
  if (res.statusCode === 401 || res.statusCode === 403 || res.statusCode === 404) {
    await res.body.dump()
    return 'private'
  }
  throw await upstream.failure(res, `anonymous access check of ${repo}`)
}

/**
 * Whether an anonymous pull finds this digest in this repository: a HEAD by digest with an
 * anonymous token (never counted as a pull). Throws UpstreamError when upstream gives no answer.
 */
export async function anonymousHas(
  repo: string,
  digest: string,
  kind: 'blob' | 'manifest',
  upstream: AnonymousExchange,
): Promise<boolean> {
  const path = `/v2/${repo}/${kind === 'blob' ? 'blobs' : 'manifests'}/${digest}`
  const headers: Record<string, string> = kind === 'manifest' ? { accept: MANIFEST_TYPES.join(', ') } : {}
  const res = await upstream.send(path, 'HEAD', headers)
  await res.body.dump()
  // A blob HEAD may redirect to storage: the registry found it.
  if (res.statusCode === 200 || isRedirect(res.statusCode)) return true
  if (res.statusCode === 401 || res.statusCode === 403 || res.statusCode === 404) return false
  throw await upstream.failure(res, `anonymous HEAD ${kind} ${digest}`)
}
