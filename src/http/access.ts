// Who a client is, and which operator endpoints it may reach.
//
// Accounts come from an htpasswd file of bcrypt entries (what `htpasswd -B` writes and
// distribution's auth.htpasswd reads), re-read on reload; a file that does not parse leaves the
// accounts in force as they were. Clients send HTTP Basic credentials; a client without them is
// anonymous, and gets what anonymous pulls upstream get (mirror/visibility.ts), unless anonymous
// access is off. Checking a password is bcrypt work on purpose, so:
//   - an unknown user costs the same bcrypt work as a known one (a dummy hash of the same cost);
//   - a verified user:password pair is remembered for VERIFIED_TTL_MS under an HMAC with a key
//     made at start, so the password itself is kept nowhere and a pull's hundred requests cost one
//     bcrypt comparison;
//   - at most BCRYPT_CONCURRENCY comparisons run at once, and at most BCRYPT_QUEUE wait;
//   - an address with MAX_FAILURES failures within FAILURE_WINDOW_MS is answered 429 without any
//     comparison until the window ends, so guessing is slow and never a CPU sink.
// The Authorization header a client sends stays here: it is never logged and never goes upstream.
//
// With TLS and tls.client_ca, a client certificate the CA signed is the other way in: the client
// is signed in as the certificate's subject CN, with the rights of an account, and no password is
// asked for. Which certificates get that far is decided in the handshake (src/tls.ts); only a
// socket Node marks `authorized` counts here.

import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { BlockList, isIPv4, type Socket } from 'node:net'
import { TLSSocket } from 'node:tls'
import type { HttpBindings } from '@hono/node-server'
import bcrypt from 'bcryptjs'
import { LRUCache } from 'lru-cache'
import pLimit from 'p-limit'
import type { Config } from '../config.js'
import { parseNetwork } from '../config-fields.js'
import { RegistryError } from '../errors.js'
import type { Logger } from '../log.js'

/** The client behind a request: an account name, or null for anonymous. */
export interface Viewer {
  user: string | null
}

/** The Hono environment of every route that knows who is asking (set by the app's middleware). */
export type RegistryEnv = { Bindings: HttpBindings; Variables: { viewer: Viewer } }

export const ANONYMOUS: Viewer = Object.freeze({ user: null })
/** A node of this cluster relaying its client's request (the access log names it so). */
export const PEER: Viewer = Object.freeze({ user: 'cluster-peer' })

function secretDigest(secret: string | null): Buffer | null {
  return secret === null || secret === '' ? null : createHash('sha256').update(secret).digest()
}

export const REALM = 'pullcache'
const VERIFIED_TTL_MS = 60_000
const BCRYPT_CONCURRENCY = 2
const BCRYPT_QUEUE = 64
export const MAX_FAILURES = 10
export const FAILURE_WINDOW_MS = 60_000

/** Parses an htpasswd file; every problem is reported, with its line. */
export function parseHtpasswd(text: string): { accounts: Map<string, string>; problems: string[] } {
  const accounts = new Map<string, string>()
  const problems: string[] = []
  const lines = text.split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim()
    if (line === '' || line.startsWith('#')) continue
    const colon = line.indexOf(':')
    if (colon <= 0) {
      problems.push(`line ${i + 1}: not "user:hash"`)
      continue
    }
    const user = line.slice(0, colon)
    const hash = line.slice(colon + 1)
    if (!/^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/.test(hash)) {
      problems.push(
        `line ${i + 1}: user ${JSON.stringify(user)} has a ${hashKind(hash)} hash; only bcrypt is accepted (htpasswd -B)`,
      )
      continue
    }
    if (accounts.has(user)) {
      problems.push(`line ${i + 1}: user ${JSON.stringify(user)} is listed twice`)
      continue
    }
    accounts.set(user, hash)
  }
  return { accounts, problems }
}

function hashKind(hash: string): string {
  if (hash.startsWith('$apr1$')) return 'MD5 ($apr1$)'
  if (hash.startsWith('{SHA}')) return 'SHA-1 ({SHA})'
  if (hash.startsWith('$5$') || hash.startsWith('$6$')) return 'SHA-crypt'
  if (hash.startsWith('$2')) return 'malformed bcrypt'
  return hash === '' ? 'empty' : 'crypt or plain-text'
}

export class HtpasswdError extends Error {
  readonly code = 'HTPASSWD_INVALID'
  constructor(path: string, problems: string[]) {
    super(`${path}: ${problems.join('; ')}`)
    this.name = 'HtpasswdError'
  }
}

function loadHtpasswd(path: string): Map<string, string> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new HtpasswdError(path, [`cannot read: ${(err as NodeJS.ErrnoException).code ?? err}`])
  }
  const { accounts, problems } = parseHtpasswd(text)
  if (problems.length > 0) throw new HtpasswdError(path, problems)
  return accounts
}

/** Basic credentials from an Authorization header; undefined when it is not Basic at all. */
function parseBasic(header: string): { user: string; password: string } | 'malformed' | undefined {
  const m = /^\s*basic\s+(\S*)\s*$/i.exec(header)
  if (!m) return undefined
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8')
  // containers/image answers a Basic challenge with "Basic Og==" (":") when it has no
  // credentials for the host: that is an anonymous client, not a failed sign-in.
  if (decoded === ':') return undefined
  const colon = decoded.indexOf(':')
  if (colon <= 0) return 'malformed'
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) }
}

export interface AccessOptions {
  config: Config
  log: Logger
}

export class Access {
  private readonly log: Logger
  private htpasswdPath: string | null
  private accounts = new Map<string, string>()
  private dummyHash = ''
  private anonymous: boolean
  /** Whether client certificates sign in: settled at start, as whether the handshake asks for one. */
  private readonly certificates: boolean
  private adminAllow: BlockList | null
  private adminAllowText: readonly string[]
  private readonly hmacKey = randomBytes(32)
  private readonly verified = new LRUCache<string, string>({ max: 1024, ttl: VERIFIED_TTL_MS })
  private readonly failures = new LRUCache<string, { count: number; since: number }>({
    max: 10_000,
    ttl: FAILURE_WINDOW_MS,
  })
  private readonly bcryptLimit = pLimit(BCRYPT_CONCURRENCY)
  /** sha256 of the cluster secret; null without a cluster. */
  private peerSecret: Buffer | null

  /** Throws HtpasswdError when the configured file cannot be used: no server without it. */
  constructor(opts: AccessOptions) {
    this.log = opts.log
    this.htpasswdPath = opts.config.auth.htpasswd
    this.anonymous = opts.config.auth.anonymous
    this.certificates = opts.config.tls.client_ca !== null
    this.adminAllowText = opts.config.admin.allow
    this.adminAllow = blockList(opts.config.admin.allow)
    if (this.htpasswdPath !== null) this.setAccounts(loadHtpasswd(this.htpasswdPath))
    this.peerSecret = secretDigest(opts.config.cluster.secret)
  }

  /**
   * Another node of the cluster, relaying a request its own client was allowed to make: it may
   * read what this node's account reads. undefined when the header is absent or wrong.
   */
  peer(header: string | undefined): Viewer | undefined {
    if (header === undefined || this.peerSecret === null) return undefined
    const given = secretDigest(header)
    return given !== null && timingSafeEqual(given, this.peerSecret) ? PEER : undefined
  }

  /** Whether any client can authenticate. */
  get hasAccounts(): boolean {
    return this.htpasswdPath !== null
  }

  /**
   * Applies auth.* and admin.* from a new config, re-reading the htpasswd file; returns the keys
   * that changed. A file that cannot be used leaves the accounts as they were, and says why.
   */
  reload(config: Config): string[] {
    const changed: string[] = []
    const path = config.auth.htpasswd
    if (path === null) {
      if (this.htpasswdPath !== null) {
        this.setAccounts(new Map())
        changed.push('auth.htpasswd')
      }
      this.htpasswdPath = null
    } else {
      try {
        const accounts = loadHtpasswd(path)
        const before = [...this.accounts].join('\n')
        this.setAccounts(accounts)
        if (path !== this.htpasswdPath || before !== [...accounts].join('\n')) changed.push('auth.htpasswd')
        this.htpasswdPath = path
        this.log.info('auth.htpasswd_loaded', { path, accounts: accounts.size })
      } catch (err) {
        this.log.error('auth.htpasswd_rejected', {
          path,
          error: (err as Error).message,
          kept_accounts: this.accounts.size,
        })
      }
    }
    if (config.auth.anonymous !== this.anonymous) {
      this.anonymous = config.auth.anonymous
      changed.push('auth.anonymous')
    }
    const peerSecret = secretDigest(config.cluster.secret)
    if (peerSecret?.toString('hex') !== this.peerSecret?.toString('hex')) {
      this.peerSecret = peerSecret
      changed.push('cluster.secret')
    }
    if (JSON.stringify(config.admin.allow) !== JSON.stringify(this.adminAllowText)) {
      this.adminAllowText = config.admin.allow
      this.adminAllow = blockList(config.admin.allow)
      changed.push('admin.allow')
    }
    return changed
  }

  private setAccounts(accounts: Map<string, string>): void {
    this.accounts = accounts
    this.verified.clear()
    // The dummy hash an unknown user is compared with costs what a real account costs.
    const cost = Math.max(4, ...[...accounts.values()].map((h) => Number(h.slice(4, 6))))
    this.dummyHash = bcrypt.hashSync(randomBytes(16).toString('hex'), cost)
  }

  /**
   * The viewer behind a request: the user of a verified client certificate (certificateUser()),
   * or the account of an Authorization header, from `address`. Throws UNAUTHORIZED (with the
   * Basic challenge) for wrong or required credentials, TOOMANYREQUESTS for an address that
   * failed too often or when too much bcrypt work is waiting.
   */
  async identify(
    header: string | undefined,
    address: string,
    required = false,
    certificate: string | null = null,
  ): Promise<Viewer> {
    // The handshake checked the certificate against tls.client_ca; a password adds nothing.
    if (certificate !== null && this.certificates) return { user: certificate }
    const basic = header === undefined || !this.hasAccounts ? undefined : parseBasic(header)
    if (basic === undefined) {
      // No accounts: credentials meant for someone else (a registry's, a proxy's) change nothing.
      if (this.hasAccounts && (required || !this.anonymous)) throw challenge('authentication required')
      if (!this.anonymous) {
        // Client certificates are the only way in: a Basic challenge would ask for a password
        // nothing can check.
        throw new RegistryError('UNAUTHORIZED', { reason: 'a client certificate is required' })
      }
      return ANONYMOUS
    }
    const now = Date.now()
    const failed = this.failures.get(address)
    if (failed !== undefined && failed.count >= MAX_FAILURES) {
      const retry = Math.max(1, Math.ceil((failed.since + FAILURE_WINDOW_MS - now) / 1000))
      throw new RegistryError(
        'TOOMANYREQUESTS',
        { reason: 'too many failed sign-ins from this address' },
        { headers: { 'Retry-After': String(retry) } },
      )
    }
    const user = basic === 'malformed' ? undefined : await this.verify(basic.user, basic.password)
    if (user !== undefined) return { user }
    if (failed === undefined) this.failures.set(address, { count: 1, since: now })
    else {
      failed.count++
      // Keeps its first failure's time: the window does not slide with every guess.
      this.failures.set(address, failed, { ttl: Math.max(1, failed.since + FAILURE_WINDOW_MS - now) })
    }
    this.log.warn('auth.failed', {
      address,
      user: basic === 'malformed' ? null : basic.user,
      reason: basic === 'malformed' ? 'malformed credentials' : 'wrong user or password',
    })
    throw challenge('wrong user name or password')
  }

  private async verify(user: string, password: string): Promise<string | undefined> {
    const key = createHmac('sha256', this.hmacKey).update(user).update('\0').update(password).digest('hex')
    const known = this.verified.get(key)
    if (known !== undefined) return known
    if (this.bcryptLimit.pendingCount >= BCRYPT_QUEUE) {
      throw new RegistryError(
        'TOOMANYREQUESTS',
        { reason: 'too many sign-ins being checked' },
        { headers: { 'Retry-After': '1' } },
      )
    }
    const hash = this.accounts.get(user)
    const ok = await this.bcryptLimit(() => bcrypt.compare(password, hash ?? this.dummyHash))
    // A reload may have landed during the comparison: the password counts only if the hash it
    // matched is still the account's. Comparing maps instead would refuse every sign-in that a
    // reload of an unchanged file overlaps, as a wrong password.
    if (!ok || hash === undefined || this.accounts.get(user) !== hash) return undefined
    this.verified.set(key, user)
    return user
  }

  /** Whether `address` may reach the operator endpoints (admin.allow; none listed: everyone). */
  adminAllowed(address: string): boolean {
    if (this.adminAllow === null) return true
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1]
    const plain = mapped ?? address
    return this.adminAllow.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6')
  }
}

/**
 * The user a client certificate signs in: the subject's CN (or, without one, the whole subject),
 * when the handshake verified the certificate against tls.client_ca; otherwise null.
 */
export function certificateUser(socket: Socket): string | null {
  if (!(socket instanceof TLSSocket) || !socket.authorized) return null
  const cert = socket.getPeerCertificate()
  const subject = cert?.subject
  if (subject === undefined) return null
  const cn = (subject as unknown as Record<string, string | string[] | undefined>).CN
  const name = Array.isArray(cn) ? cn[0] : cn
  if (name !== undefined && name !== '') return name
  const whole = Object.entries(subject)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`)
    .join(',')
  return whole === '' ? null : whole
}

function blockList(networks: readonly string[]): BlockList | null {
  if (networks.length === 0) return null
  const list = new BlockList()
  for (const text of networks) {
    const n = parseNetwork(text)
    if (n === undefined) continue // the config refused it already
    list.addSubnet(n.address, n.prefix, n.family === 4 ? 'ipv4' : 'ipv6')
  }
  return list
}

/** 401 with the challenge clients answer with Basic credentials. */
export function challenge(reason: string): RegistryError {
  return new RegistryError(
    'UNAUTHORIZED',
    { reason },
    { headers: { 'WWW-Authenticate': `Basic realm="${REALM}"` } },
  )
}
