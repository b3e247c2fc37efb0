// Configuration: embedded defaults, then an optional JSON file, then PULLCACHE_* environment
// variables, then command-line flags. Everything is validated in one pass so an operator sees
// every problem at once, each with its path; unknown keys are errors, not silently ignored.
// Secrets never live in the file: the upstream password comes from the environment or a file
// (systemd's LoadCredential= puts one under $CREDENTIALS_DIRECTORY).

import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { z } from 'zod'

export const DOCKER_HUB = 'https://registry-1.docker.io'

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }
const UNITS_BYTES: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
}

/** "500ms", "60s", "5m", "24h", "7d" -> milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/i.exec(text)
  if (!m) return undefined
  return Math.round(Number(m[1]) * UNITS_MS[m[2]!.toLowerCase()]!)
}

/** "64MiB", "50GiB", "1.5GB", "1024" -> bytes. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$/i.exec(text)
  if (!m) return undefined
  return Math.floor(Number(m[1]) * UNITS_BYTES[(m[2] ?? 'b').toLowerCase()]!)
}

/** A string in units, parsed by `parse`; `positive` refuses zero (a budget of 0 bytes is a typo). */
function unitString(parse: (text: string) => number | undefined, example: string, positive = false) {
  return z.string().transform((text, ctx) => {
    const value = parse(text)
    if (value === undefined || (positive && value <= 0)) {
      ctx.addIssue({ code: 'custom', message: `not ${example}: ${JSON.stringify(text)}` })
      return z.NEVER
    }
    return value
  })
}

const duration = unitString(parseDuration, 'a duration like "60s", "5m" or "500ms"')
const size = unitString(parseSize, 'a size like "64MiB" or "50GiB"')

/** "host:port", ":port" or "[::1]:port". */
const listen = z.string().transform((text, ctx) => {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text)
  const port = m ? Number(m[3]) : Number.NaN
  if (!m || port > 65535) {
    ctx.addIssue({
      code: 'custom',
      message: `not a listen address like ":5000" or "127.0.0.1:5000": ${text}`,
    })
    return z.NEVER
  }
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port }
})

const upstreamUrl = z.string().transform((text, ctx) => {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    ctx.addIssue({ code: 'custom', message: `not a URL: ${text}` })
    return z.NEVER
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    ctx.addIssue({ code: 'custom', message: `upstream must be http or https: ${text}` })
    return z.NEVER
  }
  if (url.username || url.password) {
    // A password in a URL ends up in logs and process listings; make the operator move it.
    ctx.addIssue({
      code: 'custom',
      message: 'put credentials in upstream.username and a password file, not the URL',
    })
    return z.NEVER
  }
  if (url.search || url.hash || (url.pathname !== '/' && url.pathname !== '')) {
    ctx.addIssue({ code: 'custom', message: `upstream must be a registry root like ${DOCKER_HUB}: ${text}` })
    return z.NEVER
  }
  return url.origin
})

/**
 * A tag pattern: a glob over "repo:tag" ("*:latest", "library/*:*"), a glob over the tag alone
 * when it has no ':' ("latest", "v*"), or a regular expression over the tag in slashes
 * ("/^v?\\d+\\.\\d+\\.\\d+$/"). `*` matches within one path component; `**` across '/'.
 */
const tagPattern = z.string().transform((text, ctx) => {
  const compiled = compileTagPattern(text)
  if (compiled === undefined) {
    ctx.addIssue({ code: 'custom', message: `not a valid pattern: ${text}` })
    return z.NEVER
  }
  return { text, test: compiled }
})

/** "10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8": one network or address of admin.allow. */
const network = z.string().transform((text, ctx) => {
  const parsed = parseNetwork(text)
  if (parsed === undefined) {
    ctx.addIssue({ code: 'custom', message: `not an address or CIDR network like "10.0.0.0/8": ${text}` })
    return z.NEVER
  }
  return text.trim()
})

export function parseNetwork(text: string): { address: string; prefix: number; family: 4 | 6 } | undefined {
  const m = /^\s*([^/\s]+)(?:\/(\d{1,3}))?\s*$/.exec(text)
  if (!m) return undefined
  const family = isIP(m[1]!)
  if (family !== 4 && family !== 6) return undefined
  const max = family === 4 ? 32 : 128
  const prefix = m[2] === undefined ? max : Number(m[2])
  if (prefix > max) return undefined
  return { address: m[1]!, prefix, family }
}

const nullableSize = unitString(parseSize, 'a size like "50GiB"', true).nullable()
const nullableDuration = unitString(parseDuration, 'a duration like "30d"', true).nullable()

const schema = z.strictObject({
  listen: listen.prefault(':5000'),
  data_dir: z.string().min(1).default('./data'),
  // Never contact upstream; uncached requests fail at once. Switchable at run time (SIGHUP).
  offline: z.boolean().default(false),
  // On SIGTERM: how long responses in flight may take to finish before connections are cut.
  shutdown_grace: duration.prefault('10s'),
  upstream: z
    .strictObject({
      url: upstreamUrl.prefault(DOCKER_HUB),
      username: z.string().min(1).nullable().default(null),
      password_file: z.string().min(1).nullable().default(null),
      connect_timeout: duration.prefault('10s'),
      header_timeout: duration.prefault('30s'),
      idle_timeout: duration.prefault('30s'),
      max_concurrent_fetches: z.number().int().min(1).max(1024).default(16),
      connections: z.number().int().min(1).max(1024).default(32),
      // Below this many pulls left (Docker Hub's ratelimit-remaining), cached tags are served
      // without revalidation until the rate-limit window has passed.
      rate_limit_reserve: z.number().int().min(0).default(10),
      // Docker Hub keeps official images under library/: a one-component name ("alpine") is
      // asked for upstream as "library/alpine". Turn off for a registry with one-component names.
      library_prefix: z.boolean().default(true),
    })
    .prefault({}),
  cache: z
    .strictObject({
      tag_freshness: duration.prefault('60s'),
      // How long a client with a cached copy waits on a tag revalidation before it gets the
      // cached copy, marked stale; the revalidation goes on and updates the tag when it ends.
      revalidate_timeout: duration.prefault('5s'),
      manifest_memory: size.prefault('64MiB'),
      // Per-pattern freshness, first match wins; tags matching none get tag_freshness.
      tag_freshness_rules: z.array(z.strictObject({ match: tagPattern, freshness: duration })).prefault([]),
      // The store's byte budget (null: unlimited). Above high_water * max_size, the least
      // recently used blobs go until the store is under low_water * max_size.
      max_size: nullableSize.prefault(null),
      high_water: z.number().gt(0).max(1).default(0.95),
      low_water: z.number().gt(0).max(1).default(0.85),
      // Blobs and manifests unused this long are removed whatever the budget (null: never).
      max_unused_age: nullableDuration.prefault(null),
      // Never evicted, with everything their manifests reference: "repo:tag" patterns as above.
      pins: z.array(tagPattern).prefault([]),
      eviction_interval: duration.prefault('1m'),
    })
    .refine((c) => c.low_water < c.high_water, {
      message: 'low_water must be below high_water',
      path: ['low_water'],
      // Checked even when other cache keys are wrong, so every problem is reported at once.
      when: ({ value }) => {
        const v = value as { low_water?: unknown; high_water?: unknown } | undefined
        return typeof v?.low_water === 'number' && typeof v.high_water === 'number'
      },
    })
    .prefault({}),
  index: z
    .strictObject({
      flush_interval: duration.prefault('1s'),
    })
    .prefault({}),
  auth: z
    .strictObject({
      // htpasswd file of client accounts (bcrypt entries, as `htpasswd -B` writes); re-read on
      // SIGHUP. null: no accounts, every client is anonymous.
      htpasswd: z.string().min(1).nullable().default(null),
      // Whether clients without an account may pull what anonymous pulls upstream may read.
      anonymous: z.boolean().default(true),
    })
    .prefault({}),
  admin: z
    .strictObject({
      // Networks allowed to reach the status page, /_pullcache/* and /metrics (health checks
      // excepted); empty: no restriction.
      allow: z.array(network).prefault([]),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
      access: z.boolean().default(true),
    })
    .prefault({}),
})

type Parsed = z.output<typeof schema>

export interface Config extends Omit<Parsed, 'upstream'> {
  upstream: Parsed['upstream'] & { password: string | null }
}

export class ConfigError extends Error {
  readonly problems: string[]
  constructor(problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

export interface ConfigSources {
  /** Path of a JSON config file, or undefined for embedded defaults. */
  file?: string | undefined
  env?: NodeJS.ProcessEnv
  /** Dotted keys from command-line flags, e.g. { 'upstream.url': '...' }. */
  flags?: Record<string, string | undefined>
}

/** Environment variable -> config key. Each takes the same text form as the file. */
const ENV_KEYS: Record<string, string> = {
  PULLCACHE_LISTEN: 'listen',
  PULLCACHE_DATA_DIR: 'data_dir',
  PULLCACHE_UPSTREAM: 'upstream.url',
  PULLCACHE_UPSTREAM_USERNAME: 'upstream.username',
  PULLCACHE_UPSTREAM_PASSWORD_FILE: 'upstream.password_file',
  PULLCACHE_UPSTREAM_MAX_CONCURRENT_FETCHES: 'upstream.max_concurrent_fetches',
  PULLCACHE_TAG_FRESHNESS: 'cache.tag_freshness',
  PULLCACHE_MAX_SIZE: 'cache.max_size',
  PULLCACHE_OFFLINE: 'offline',
  PULLCACHE_LOG_LEVEL: 'log.level',
  PULLCACHE_ACCESS_LOG: 'log.access',
  PULLCACHE_AUTH_HTPASSWD: 'auth.htpasswd',
  PULLCACHE_AUTH_ANONYMOUS: 'auth.anonymous',
  PULLCACHE_ADMIN_ALLOW: 'admin.allow',
}

const NUMERIC_KEYS = new Set(['upstream.max_concurrent_fetches', 'upstream.connections'])
const BOOLEAN_KEYS = new Set(['log.access', 'offline', 'upstream.library_prefix', 'auth.anonymous'])
/** Comma-separated lists in the environment. */
const LIST_KEYS = new Set(['admin.allow'])

function setPath(target: Record<string, unknown>, dotted: string, text: string, problems: string[]) {
  const parts = dotted.split('.')
  let node = target
  for (const part of parts.slice(0, -1)) {
    const next = node[part]
    if (typeof next !== 'object' || next === null) node[part] = {}
    node = node[part] as Record<string, unknown>
  }
  let value: unknown = text
  if (NUMERIC_KEYS.has(dotted)) value = /^\d+$/.test(text) ? Number(text) : text
  if (BOOLEAN_KEYS.has(dotted)) {
    if (/^(1|true|yes|on)$/i.test(text)) value = true
    else if (/^(0|false|no|off)$/i.test(text)) value = false
    else problems.push(`${dotted}: expected true or false, got ${JSON.stringify(text)}`)
  }
  if (LIST_KEYS.has(dotted)) {
    value = text
      .split(',')
      .map((item) => item.trim())
      .filter((item) => item !== '')
  }
  node[parts.at(-1)!] = value
}

export function loadConfig(sources: ConfigSources = {}): Config {
  const env = sources.env ?? process.env
  const problems: string[] = []
  let raw: Record<string, unknown> = {}
  const file = sources.file ?? env.PULLCACHE_CONFIG
  if (file) {
    try {
      const parsed: unknown = JSON.parse(readFileSync(file, 'utf8'))
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
        problems.push(`${file}: the config must be a JSON object`)
      } else {
        raw = parsed as Record<string, unknown>
      }
    } catch (err) {
      problems.push(`${file}: ${(err as Error).message}`)
    }
  }
  for (const [name, key] of Object.entries(ENV_KEYS)) {
    const value = env[name]
    if (value !== undefined && value !== '') setPath(raw, key, value, problems)
  }
  for (const [key, value] of Object.entries(sources.flags ?? {})) {
    if (value !== undefined) setPath(raw, key, value, problems)
  }

  const result = schema.safeParse(raw)
  if (!result.success) {
    for (const issue of result.error.issues) {
      const where = issue.path.length > 0 ? issue.path.join('.') : '(top level)'
      problems.push(`${where}: ${issue.message}`)
    }
  }

  const password = readPassword(result.success ? result.data.upstream.password_file : null, env, problems)
  if (problems.length > 0 || !result.success) throw new ConfigError(problems)
  const parsed = result.data
  if (password !== null && parsed.upstream.username === null) {
    throw new ConfigError(['upstream.username: a password is set but no username'])
  }
  if (!parsed.auth.anonymous && parsed.auth.htpasswd === null) {
    throw new ConfigError(['auth.anonymous: turning anonymous access off needs accounts in auth.htpasswd'])
  }
  const config: Config = { ...parsed, upstream: { ...parsed.upstream, password } }
  return deepFreeze(config)
}

function readPassword(file: string | null, env: NodeJS.ProcessEnv, problems: string[]): string | null {
  const fromEnv = env.PULLCACHE_UPSTREAM_PASSWORD
  if (fromEnv !== undefined && fromEnv !== '') {
    if (file !== null) problems.push('upstream: set the password by environment or by file, not both')
    return fromEnv
  }
  if (file === null) return null
  try {
    // A trailing newline is what editors and `echo` leave; it is never part of a password.
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '')
  } catch (err) {
    problems.push(
      `upstream.password_file: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`,
    )
    return null
  }
}

export type TagPattern = { text: string; test: (repo: string, tag: string) => boolean }

export function compileTagPattern(text: string): ((repo: string, tag: string) => boolean) | undefined {
  if (text.length > 1 && text.startsWith('/') && text.endsWith('/')) {
    try {
      const re = new RegExp(text.slice(1, -1))
      return (_repo, tag) => re.test(tag)
    } catch {
      return undefined
    }
  }
  if (text.length === 0) return undefined
  const colon = text.lastIndexOf(':')
  if (colon === -1) {
    const tagRe = globToRegExp(text)
    return (_repo, tag) => tagRe.test(tag)
  }
  const repoRe = globToRegExp(text.slice(0, colon))
  const tagRe = globToRegExp(text.slice(colon + 1))
  return (repo, tag) => repoRe.test(repo) && tagRe.test(tag)
}

function globToRegExp(glob: string): RegExp {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*'
      i++
    } else if (c === '*') re += '[^/]*'
    else if (c === '?') re += '[^/]'
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&')
  }
  return new RegExp(`^${re}$`)
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child)
    Object.freeze(value)
  }
  return value
}

/** The config as JSON with secrets masked, for `config check` and the startup log. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    ...config,
    upstream: { ...config.upstream, password: config.upstream.password === null ? null : '********' },
    cache: {
      ...config.cache,
      tag_freshness_rules: config.cache.tag_freshness_rules.map((r) => ({
        match: r.match.text,
        freshness: r.freshness,
      })),
      pins: config.cache.pins.map((p) => p.text),
    },
  }
}
