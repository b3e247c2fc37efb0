// Bearer-token auth the way Docker Hub does it: a 401 carries
//   WWW-Authenticate: Bearer realm="https://auth.docker.io/token",service="registry.docker.io",
//                     scope="repository:library/alpine:pull"
// and a GET of realm?service=&scope= (with HTTP Basic when we have an account) answers
// {"token"|"access_token", "expires_in", "issued_at"}. Tokens are cached per scope until shortly
// before they expire, and concurrent requests for one scope share one token fetch. A JWT token's
// access claim says what it grants. These are the formats and the cache, with no I/O; the
// exchange itself (sending, retrying on a 401, the credentials) is token-exchange.ts's.

import { LRUCache } from 'lru-cache'

export interface Challenge {
  scheme: 'bearer' | 'basic'
  realm: string
  service: string | undefined
  scope: string | undefined
  /** RFC 6750's error, e.g. insufficient_scope: a token was presented and does not grant this. */
  error: string | undefined
}

/** Parses the first Bearer or Basic challenge of a WWW-Authenticate header. */
export function parseChallenge(header: string | string[] | undefined): Challenge | undefined {
  const text = Array.isArray(header) ? header.join(', ') : header
  if (!text) return undefined
  const m = /^\s*(bearer|basic)\b(.*)$/is.exec(text)
  if (!m) return undefined
  const params: Record<string, string> = {}
  const re = /([a-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))/gi
  for (const p of m[2]!.matchAll(re))
    params[p[1]!.toLowerCase()] = p[2]?.replace(/\\(.)/g, '$1') ?? p[3] ?? ''
  const scheme = m[1]!.toLowerCase() as 'bearer' | 'basic'
  return {
    scheme,
    realm: params.realm ?? '',
    service: params.service,
    scope: params.scope,
    error: params.error,
  }
}

export interface Credentials {
  username: string
  password: string
}

export interface TokenResponse {
  token: string
  /** Seconds the token stays valid, as the server said (60 when it did not say). */
  expiresIn: number
}

/** At least this long, as distribution and the token spec have it. */
const MIN_LIFETIME_S = 60

export function parseTokenResponse(body: unknown): TokenResponse | undefined {
  if (typeof body !== 'object' || body === null) return undefined
  const b = body as Record<string, unknown>
  const token = typeof b.token === 'string' && b.token ? b.token : b.access_token
  if (typeof token !== 'string' || token === '') return undefined
  const declared =
    typeof b.expires_in === 'number' && Number.isFinite(b.expires_in) ? b.expires_in : MIN_LIFETIME_S
  let expiresIn = Math.max(declared, MIN_LIFETIME_S)
  // A token issued in the past (clock skew, or a proxy that cached the answer) has less left.
  if (typeof b.issued_at === 'string') {
    const issued = Date.parse(b.issued_at)
    if (Number.isFinite(issued)) {
      const age = (Date.now() - issued) / 1000
      if (age > 0 && age < expiresIn) expiresIn -= age
    }
  }
  return { token, expiresIn }
}

/**
 * Whether a JWT bearer token grants pull of the repository, from its `access` claim
 * ([{type: "repository", name, actions: ["pull"]}], as Docker Hub and distribution's token
 * servers write it). Undefined for a token that is not a JWT with such a claim: opaque tokens say
 * nothing. The signature is not checked: the token came straight from the token service, and
 * it is read only to learn what the service granted.
 */
export function jwtGrantsPull(token: string, repo: string): boolean | undefined {
  const parts = token.split('.')
  if (parts.length !== 3) return undefined
  let claims: unknown
  try {
    claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'))
  } catch {
    return undefined
  }
  const access = (claims as { access?: unknown } | null)?.access
  if (!Array.isArray(access)) return undefined
  return access.some((entry: unknown) => {
    const e = entry as { type?: unknown; name?: unknown; actions?: unknown } | null
    return (
      e?.type === 'repository' &&
      e.name === repo &&
      Array.isArray(e.actions) &&
      (e.actions.includes('pull') || e.actions.includes('*'))
    )
  })
}

/**
 * Whether an account's password may go to a token realm. Only to the upstream's own host or a
 * host of the same registrable domain (registry-1.docker.io -> auth.docker.io), and never over
 * plain http unless the upstream itself was configured as plain http.
 */
export function realmMayReceiveCredentials(realm: URL, upstream: URL): boolean {
  if (realm.protocol !== 'https:' && !(realm.protocol === 'http:' && upstream.protocol === 'http:'))
    return false
  if (realm.hostname === upstream.hostname) return true
  const domainOf = (host: string) => host.split('.').slice(-2).join('.')
  const isName = (host: string) => /[a-z]/i.test(host) && host.includes('.') && !host.includes(':')
  return (
    isName(realm.hostname) &&
    isName(upstream.hostname) &&
    domainOf(realm.hostname) === domainOf(upstream.hostname)
  )
}

/** Tokens per (realm, service, scope); the fetch itself is injected by token-exchange.ts. */
export class TokenCache {
  private readonly tokens: LRUCache<string, string>
  private readonly inflight = new Map<string, Promise<string>>()

  constructor(max = 10_000) {
    this.tokens = new LRUCache<string, string>({ max, ttlAutopurge: false })
  }

  invalidate(key: string, token: string): void {
    // Another request may already have replaced it with a fresh one; keep that.
    if (this.tokens.get(key) === token) this.tokens.delete(key)
  }

  clear(): void {
    this.tokens.clear()
  }

  /** One fetch per key at a time; the token is kept until shortly before it expires. */
  async obtain(key: string, fetchToken: () => Promise<TokenResponse>): Promise<string> {
    const cached = this.tokens.get(key)
    if (cached !== undefined) return cached
    let pending = this.inflight.get(key)
    if (!pending) {
      pending = (async () => {
        try {
          const { token, expiresIn } = await fetchToken()
          // Renew a little early so a token never expires between our check and upstream's.
          const margin = Math.min(30, expiresIn / 5)
          this.tokens.set(key, token, { ttl: Math.max(1, expiresIn - margin) * 1000 })
          return token
        } finally {
          this.inflight.delete(key)
        }
      })()
      this.inflight.set(key, pending)
    }
    return pending
  }
}
