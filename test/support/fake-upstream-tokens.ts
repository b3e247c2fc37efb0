// Bearer tokens as Docker Hub's auth service hands them out, remembered here with the repositories
// they may pull and when they stop working. Two formats:
//   'opaque' (the default): `fake-<random>`, which tells the client nothing;
//   'jwt':    <header>.<claims>.<random>, whose claims carry Hub's `access` list
//             ([{type: "repository", name, actions: ["pull"]}], empty actions for a repository the
//             caller may not pull), so a client can read what a token grants. The third part is
//             no signature: the fake itself is the only party that checks its tokens.
import { randomBytes } from 'node:crypto'

interface Grant {
  repos: ReadonlySet<string>
  expiresAt: number
  revoked: boolean
}

export type TokenCheck = 'ok' | 'invalid_token' | 'insufficient_scope'

export type TokenFormat = 'opaque' | 'jwt'

export class TokenStore {
  readonly #grants = new Map<string, Grant>()

  issue(
    repos: ReadonlySet<string>,
    ttlSeconds: number,
    format: TokenFormat = 'opaque',
    asked: readonly string[] = [...repos],
    subject = '',
  ): { token: string; issuedAt: Date } {
    const issuedAt = new Date()
    let token = `fake-${randomBytes(24).toString('base64url')}`
    if (format === 'jwt') {
      const now = Math.floor(issuedAt.getTime() / 1000)
      const claims = {
        iss: 'fake-upstream',
        sub: subject,
        aud: 'fake-registry',
        iat: now,
        exp: now + ttlSeconds,
        access: asked.map((name) => ({ type: 'repository', name, actions: repos.has(name) ? ['pull'] : [] })),
      }
      const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
      token = `${part({ typ: 'JWT', alg: 'none' })}.${part(claims)}.${randomBytes(16).toString('base64url')}`
    }
    this.#grants.set(token, { repos, expiresAt: issuedAt.getTime() + ttlSeconds * 1000, revoked: false })
    return { token, issuedAt }
  }

  // repo undefined is the /v2/ ping: any live token is enough, whatever its scope.
  check(token: string, repo: string | undefined): TokenCheck {
    const g = this.#grants.get(token)
    if (g === undefined || g.revoked || Date.now() >= g.expiresAt) return 'invalid_token'
    if (repo !== undefined && !g.repos.has(repo)) return 'insufficient_scope'
    return 'ok'
  }

  // Kept rather than deleted so the registry's answer stays "invalid_token", as it is for a token
  // that has run out on its own.
  expireAll(): void {
    for (const g of this.#grants.values()) g.revoked = true
  }
}

// `scope` may repeat, and one value may hold several space-separated scopes (token.md). Only pull
// is ever granted: the fake upstream is read-only, like an anonymous Hub session.
export function pullableRepos(scopes: readonly string[]): Set<string> {
  const repos = new Set<string>()
  for (const scope of scopes.flatMap((s) => s.split(' '))) {
    const first = scope.indexOf(':')
    const last = scope.lastIndexOf(':')
    if (first < 0 || last <= first) continue
    if (scope.slice(0, first) !== 'repository') continue
    const actions = scope.slice(last + 1).split(',')
    if (actions.includes('pull') || actions.includes('*')) repos.add(scope.slice(first + 1, last))
  }
  return repos
}

export function parseBasic(header: string): { user: string; password: string } | undefined {
  const m = /^basic\s+(\S+)$/i.exec(header.trim())
  if (m?.[1] === undefined) return undefined
  const decoded = Buffer.from(m[1], 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  if (colon < 0) return undefined
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) }
}

// What goes into RecordedRequest.authorization: the Basic user but never the password, so test
// output and snapshots cannot leak a secret; every other scheme verbatim (tokens are fake).
export function redactAuthorization(header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  if (!/^basic\s/i.test(header.trim())) return header
  const basic = parseBasic(header)
  return basic === undefined ? 'Basic <malformed>' : `Basic ${basic.user}`
}
