// Requests that carry authority to the upstream origin, and the token exchange behind them. A
// request goes out with the cached token for its scope when there is one; a 401 names the token
// service (or asks for Basic), a token is fetched for the scope and the request is sent once
// more. Tokens are fetched as the configured account or anonymously (to learn what anonymous
// pulls may read); the account's password goes only to a realm trusted with it. auth.ts holds
// the formats and the token cache; this module owns the credentials and carries the exchange out.

import { networkFailure, UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import {
  type Challenge,
  type Credentials,
  parseChallenge,
  parseTokenResponse,
  realmMayReceiveCredentials,
  TokenCache,
  type TokenResponse,
} from './auth.js'
import { header, MAX_ERROR_BODY, type Response, readLimited } from './response.js'
import type { RequestKind, UpstreamState } from './state.js'
import type { Transport } from './transport.js'

/** Whose authority a request upstream carries: the configured account's, or nobody's. */
export type As = 'account' | 'anonymous'

export interface TokenExchangeOptions {
  origin: URL
  credentials: Credentials | null
  /** The deadline of one token fetch (upstream.header_timeout). */
  headerTimeoutMs: number
  transport: Transport
  state: UpstreamState
  log: Logger
  metrics: Metrics
  /** The upstream's host, the `upstream` label of its metrics. */
  host: string
}

export class TokenExchange {
  private readonly origin: URL
  private readonly headerTimeoutMs: number
  private readonly transport: Transport
  private readonly state: UpstreamState
  private readonly log: Logger
  private readonly metrics: Metrics
  private readonly host: string
  private readonly tokens = new TokenCache()
  private current: Challenge | undefined
  /** Upstream answered with a Basic challenge: it takes the account's Basic credentials. */
  private basicAsked = false
  private credentials: Credentials | null

  constructor(opts: TokenExchangeOptions) {
    this.origin = opts.origin
    this.credentials = opts.credentials
    this.headerTimeoutMs = opts.headerTimeoutMs
    this.transport = opts.transport
    this.state = opts.state
    this.log = opts.log
    this.metrics = opts.metrics
    this.host = opts.host
  }

  /** Whether requests carry the configured account's authority (see mirror/visibility.ts). */
  get hasCredentials(): boolean {
    return this.credentials !== null
  }

  /** The token service upstream last named in a 401, once it has named one. */
  get challenge(): Challenge | undefined {
    return this.current
  }

  /** New credentials (e.g. on reload) make every cached token stale. */
  setCredentials(credentials: Credentials | null): void {
    this.credentials = credentials
    this.tokens.clear()
  }

  /** GET /v2/ without credentials, for the token service's address. */
  async discoverChallenge(): Promise<Challenge | undefined> {
    const res = await this.transport.request('ping', 'GET', new URL('/v2/', this.origin), {})
    await res.body.dump()
    if (res.statusCode !== 401) return undefined
    const challenge = parseChallenge(res.headers['www-authenticate'])
    if (challenge?.scheme === 'bearer' && challenge.realm) this.current = challenge
    return challenge
  }

  /**
   * One request to the upstream origin with bearer auth: a cached token when we have one, else
   * whatever the 401 challenge asks for, then one retry. A 401 on a cached token means it was
   * revoked or expired early: drop it, fetch a fresh one, retry once.
   */
  async send(
    kind: RequestKind,
    repo: string,
    method: 'GET' | 'HEAD',
    path: string,
    headers: Record<string, string> = {},
    signal?: AbortSignal,
    as: As = 'account',
  ): Promise<Response> {
    const scope = `repository:${repo}:pull`
    let token = this.current ? await this.token(this.current, scope, as, signal) : undefined
    // A registry that asked for Basic once asks every time: send it at once, not after a 401.
    const first =
      token === undefined && this.basicAsked && this.credentials && as === 'account'
        ? { ...headers, authorization: basic(this.credentials) }
        : authorize(headers, token)
    let res = await this.transport.request(kind, method, new URL(path, this.origin), first, signal)
    if (res.statusCode !== 401) return res

    const challenge = parseChallenge(res.headers['www-authenticate'])
    // An anonymous token that does not grant the repository is the answer, not a stale token.
    if (as === 'anonymous' && token !== undefined && challenge?.error === 'insufficient_scope') return res
    if (challenge?.scheme === 'bearer' && challenge.realm) {
      await res.body.dump()
      if (token !== undefined && this.current)
        this.tokens.invalidate(tokenKey(this.current, scope, as), token)
      this.current = challenge
      token = await this.token(challenge, scope, as, signal)
      res = await this.transport.request(
        kind,
        method,
        new URL(path, this.origin),
        authorize(headers, token),
        signal,
      )
    } else if (
      challenge?.scheme === 'basic' &&
      this.credentials &&
      as === 'account' &&
      !('authorization' in first)
    ) {
      this.basicAsked = true
      await res.body.dump()
      res = await this.transport.request(
        kind,
        method,
        new URL(path, this.origin),
        { ...headers, authorization: basic(this.credentials) },
        signal,
      )
    }
    return res
  }

  /**
   * A token for `scope`. The fetch is shared by every request for the scope, so one caller's
   * deadline does not abort it; the caller only stops waiting. The fetch has a deadline of its
   * own, so a token service that accepts and never answers counts as upstream down.
   */
  async token(
    challenge: Challenge,
    scope: string,
    as: As = 'account',
    signal?: AbortSignal,
  ): Promise<string> {
    const obtained = this.tokens.obtain(tokenKey(challenge, scope, as), () =>
      this.fetchToken(challenge, scope, as).then(
        (token) => {
          this.metrics.tokenFetches.inc({ upstream: this.host, result: 'ok' })
          return token
        },
        (err: unknown) => {
          this.metrics.tokenFetches.inc({ upstream: this.host, result: 'error' })
          // Network failures were noted where they happened; note what the realm answered.
          if (err instanceof UpstreamError && err.kind !== 'NETWORK' && err.kind !== 'TIMEOUT') {
            this.state.markUnwell(
              err.kind === 'UNAUTHORIZED' ? 'AUTH_SERVER' : err.kind,
              err.retryAfter,
              err.status,
              err.message,
            )
          }
          throw err
        },
      ),
    )
    return signal === undefined ? obtained : untilAborted(obtained, signal)
  }

  private async fetchToken(challenge: Challenge, scope: string, as: As): Promise<TokenResponse> {
    let realm: URL
    try {
      realm = new URL(challenge.realm)
    } catch (err) {
      throw new UpstreamError('AUTH_SERVER', `token realm is not a URL: ${challenge.realm}`, { cause: err })
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') {
      throw new UpstreamError('AUTH_SERVER', `token realm must be http(s): ${realm.origin}`)
    }
    if (challenge.service) realm.searchParams.set('service', challenge.service)
    realm.searchParams.append('scope', scope)
    const headers: Record<string, string> = {}
    if (this.credentials && as === 'account') {
      if (realmMayReceiveCredentials(realm, this.origin)) {
        headers.authorization = basic(this.credentials)
        realm.searchParams.set('account', this.credentials.username)
      } else {
        this.log.warn('upstream.realm_untrusted', { realm: realm.origin, upstream: this.origin.origin })
      }
    }
    let res: Response
    try {
      res = await this.transport.request(
        'token',
        'GET',
        realm,
        headers,
        timeoutSignal(this.headerTimeoutMs, 'token'),
      )
    } catch (err) {
      throw new UpstreamError('AUTH_SERVER', `token endpoint ${realm.origin}: ${(err as Error).message}`, {
        cause: err,
      })
    }
    const bytes = await readLimited(res, MAX_ERROR_BODY)
    if (res.statusCode === 401 || res.statusCode === 403) {
      if (headers.authorization !== undefined) {
        // Wrong password, revoked access token, locked account: nothing a client can fix.
        this.log.error('upstream.credentials_refused', {
          realm: realm.origin,
          username: this.credentials?.username,
          status: res.statusCode,
        })
        throw new UpstreamError(
          'CREDENTIALS',
          `token endpoint ${realm.origin} refused the configured account`,
        )
      }
      throw new UpstreamError('UNAUTHORIZED', `token endpoint ${realm.origin} refused: ${res.statusCode}`)
    }
    if (res.statusCode === 429) {
      throw new UpstreamError('RATE_LIMITED', `token endpoint ${realm.origin} answered 429`, {
        retryAfter: header(res.headers, 'retry-after'),
      })
    }
    let parsed: ReturnType<typeof parseTokenResponse>
    try {
      parsed =
        res.statusCode === 200 && bytes ? parseTokenResponse(JSON.parse(bytes.toString('utf8'))) : undefined
    } catch {
      parsed = undefined
    }
    if (!parsed)
      throw new UpstreamError('AUTH_SERVER', `token endpoint ${realm.origin} answered ${res.statusCode}`)
    this.log.debug('upstream.token', { realm: realm.origin, scope, expires_in: parsed.expiresIn })
    return parsed
  }
}

/**
 * Aborts after `ms` with a TIMEOUT UpstreamError as the reason. The timer is unref'd: a
 * deadline alone never keeps the process alive.
 */
export function timeoutSignal(ms: number, what: string): AbortSignal {
  const controller = new AbortController()
  setTimeout(
    () =>
      controller.abort(new UpstreamError('TIMEOUT', `upstream timed out: no ${what} answer within ${ms} ms`)),
    ms,
  ).unref()
  return controller.signal
}

/** `work`, or the signal's reason as soon as it aborts; work goes on for whoever else waits. */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(networkFailure(signal.reason))
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(networkFailure(signal.reason))
    signal.addEventListener('abort', onAbort, { once: true })
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(err)
      },
    )
  })
}

function tokenKey(challenge: Challenge, scope: string, as: As): string {
  return `${as}\0${challenge.realm}\0${challenge.service ?? ''}\0${scope}`
}

function authorize(headers: Record<string, string>, token: string | undefined): Record<string, string> {
  return token === undefined ? headers : { ...headers, authorization: `Bearer ${token}` }
}

function basic(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`
}
