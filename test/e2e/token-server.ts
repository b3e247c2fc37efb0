// A Docker Hub style token server (auth.docker.io) for the test upstream.
//
// GET /token?service=..&scope=repository:<name>:<actions>[&scope=...] answers
// {"token","access_token","expires_in","issued_at"} like Hub (protocol.md §2.1). Anonymous callers get
// `pull`, except on `privateRepos` (nothing, as Hub answers for an account's private repository); a
// configured user (HTTP Basic) gets the actions it is allowed; wrong credentials get 401.
// Every request is recorded so tests can see which scopes pullcache asked for and as whom.
//
// Signing: RS256 with a key and self-signed certificate made by openssl. The JWT header carries the
// certificate in `x5c`; distribution 2.8 verifies that chain against `auth.token.rootcertbundle`
// (registry/auth/token/token.go, VerifySigningKey). x5c rather than `kid` because the `kid` path needs
// the libtrust key id (a truncated base32 SHA-256 of the SPKI), an encoding we would have to
// re-implement, while x5c is checked by Go's x509 verifier against the same bundle and also works with
// distribution 3.
import { createPrivateKey, type KeyObject, randomBytes, sign, X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { run } from './processes.js'

export type TokenUser = { username: string; password: string; actions: readonly string[] }

export type TokenRequest = {
  at: number
  service: string | null
  scopes: string[]
  account: string | null
  /** Username from the Basic header, null when the caller was anonymous. */
  basicUser: string | null
  /** Password from the Basic header, kept so tests can assert it was the configured one. */
  basicPassword: string | null
  status: number
  granted: { type: string; name: string; actions: string[] }[]
}

export type TokenServer = {
  /** The `realm` for the registry's challenge, e.g. http://127.0.0.1:1234/token. */
  readonly realm: string
  readonly port: number
  readonly requests: TokenRequest[]
  reset(): void
  stop(): Promise<void>
  start(): Promise<void>
  close(): Promise<void>
}

export type SigningMaterial = { keyPath: string; certPath: string; key: KeyObject; certDerBase64: string }

/** Key and self-signed certificate; the certificate file is the registry's rootcertbundle. */
export async function createSigningMaterial(dir: string, openssl: string): Promise<SigningMaterial> {
  const keyPath = join(dir, 'token-signing.key')
  const certPath = join(dir, 'token-signing.crt')
  await run(openssl, [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    keyPath,
    '-out',
    certPath,
    '-days',
    '2',
    '-subj',
    '/CN=pullcache-e2e-token-issuer',
  ])
  const key = createPrivateKey(await readFile(keyPath))
  const cert = new X509Certificate(await readFile(certPath))
  return { keyPath, certPath, key, certDerBase64: cert.raw.toString('base64') }
}

export type TokenServerOptions = {
  signing: SigningMaterial
  issuer: string
  service: string
  users: readonly TokenUser[]
  /** Hub answers 300; tests of token refresh can shorten it. */
  expiresInSeconds?: number
  /** Listen on this port (used by start() after stop() to come back where clients expect it). */
  port?: number
  /** Repositories only configured users may pull: anonymous tokens grant nothing on them. */
  privateRepos?: readonly string[]
}

export async function startTokenServer(options: TokenServerOptions): Promise<TokenServer> {
  const requests: TokenRequest[] = []
  const expiresIn = options.expiresInSeconds ?? 300
  let server: Server | undefined
  let port = options.port ?? 0

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://token.invalid')
    if (url.pathname !== '/token' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"details":"not found"}')
      return
    }
    const scopes = url.searchParams.getAll('scope')
    const record: TokenRequest = {
      at: Date.now(),
      service: url.searchParams.get('service'),
      scopes,
      account: url.searchParams.get('account'),
      basicUser: null,
      basicPassword: null,
      status: 200,
      granted: [],
    }
    requests.push(record)
    const basic = parseBasic(req.headers.authorization)
    let allowed: readonly string[] = ['pull']
    let subject = ''
    if (basic !== null) {
      record.basicUser = basic.username
      record.basicPassword = basic.password
      const user = options.users.find((u) => u.username === basic.username && u.password === basic.password)
      if (user === undefined) {
        // Hub answers a wrong password with 401 and a JSON body, not with an anonymous token.
        record.status = 401
        res
          .writeHead(401, { 'content-type': 'application/json' })
          .end('{"details":"incorrect username or password"}')
        return
      }
      allowed = user.actions
      subject = user.username
    }
    const isPrivate = (name: string) => basic === null && (options.privateRepos ?? []).includes(name)
    record.granted = scopes.flatMap((scope) => grant(scope, allowed, isPrivate))
    const now = Math.floor(Date.now() / 1000)
    const token = signJwt(options.signing, {
      iss: options.issuer,
      sub: subject,
      aud: options.service,
      exp: now + expiresIn,
      nbf: now - 1,
      iat: now,
      jti: randomBytes(12).toString('hex'),
      access: record.granted,
    })
    const body = JSON.stringify({
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: new Date(now * 1000).toISOString(),
    })
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' }).end(body)
  }

  const listen = async () => {
    const s = createServer(handler)
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject)
      s.listen(port, '127.0.0.1', resolve)
    })
    port = (s.address() as AddressInfo).port
    server = s
  }
  const stop = async () => {
    const s = server
    server = undefined
    if (s === undefined) return
    s.closeAllConnections()
    await new Promise<void>((resolve) => s.close(() => resolve()))
  }
  await listen()
  return {
    get realm() {
      return `http://127.0.0.1:${port}/token`
    },
    get port() {
      return port
    },
    requests,
    reset: () => {
      requests.length = 0
    },
    stop,
    start: async () => {
      if (server === undefined) await listen()
    },
    close: stop,
  }
}

/** `repository:<name>:<a,b>` intersected with what the caller may do; other resource types get nothing. */
function grant(
  scope: string,
  allowed: readonly string[],
  isPrivate: (name: string) => boolean,
): { type: string; name: string; actions: string[] }[] {
  const first = scope.indexOf(':')
  const last = scope.lastIndexOf(':')
  if (first < 0 || last <= first) return []
  const type = scope.slice(0, first)
  const name = scope.slice(first + 1, last)
  if (type !== 'repository') return []
  if (isPrivate(name)) return [{ type, name, actions: [] }]
  const actions = scope
    .slice(last + 1)
    .split(',')
    .filter((action) => allowed.includes(action) || (action === '*' && allowed.includes('push')))
  return [{ type, name, actions }]
}

function parseBasic(header: string | undefined): { username: string; password: string } | null {
  if (header === undefined || !/^basic /i.test(header)) return null
  const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  if (colon < 0) return { username: decoded, password: '' }
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) }
}

function signJwt(signing: SigningMaterial, claims: Record<string, unknown>): string {
  const header = { typ: 'JWT', alg: 'RS256', x5c: [signing.certDerBase64] }
  const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`
  const signature = sign('sha256', Buffer.from(input), signing.key)
  return `${input}.${base64url(signature)}`
}

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url')
}

/** Decodes a JWT payload without verifying it, for assertions on what a token granted. */
export function decodeJwtPayload(token: string): Record<string, unknown> {
  const payload = token.split('.')[1]
  if (payload === undefined) throw new Error('not a JWT')
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>
}
