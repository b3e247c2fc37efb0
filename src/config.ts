// Configuration: embedded defaults, then an optional JSON file, then PULLCACHE_* environment
// variables, then command-line flags. Everything is validated in one pass so an operator sees
// every problem at once, each with its path; unknown keys are errors, not silently ignored.
// Secrets never live in the file: the upstream password comes from the environment or a file
// (systemd's LoadCredential= puts one under $CREDENTIALS_DIRECTORY).

import { readFileSync } from 'node:fs'
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

// --- back to the file's shape ----------------------------------------------------------------
// `config check` prints the effective config as a file `--config` reads back unchanged. Plain
// values (strings, numbers, booleans, enums, null, arrays, objects) are written as they are; each
// schema that transforms its text (durations, sizes, listen, patterns) says how its value is
// written back, right where it is defined. fileForm() walks the schema, so a new key or section
// is printed with no change here, and a new transform without a file form is an error, which
// the round-trip test (test/unit/config-file-form.test.ts) reports.

/** Schemas whose parsed value is not what the file holds -> how to write the value back. */
const FILE_FORMS = new WeakMap<z.ZodType, (value: never) => unknown>()
/** Schemas of secrets: never printed; the file form leaves the key out. */
const SECRETS = new WeakSet<z.ZodType>()

function writtenAs<S extends z.ZodType>(schema: S, toFile: (value: z.output<S>) => unknown): S {
  FILE_FORMS.set(formKey(schema), toFile as (value: never) => unknown)
  return schema
}

/**
 * What a file form is registered under: for a transform (a pipe), the transform step itself,
 * which zod keeps when it copies the pipe (`.refine()` on a duration makes a new schema with
 * the same transform), so the copies are written back as the original is.
 */
function formKey(schema: z.ZodType): z.ZodType {
  const def = defOf(schema)
  return def.type === 'pipe' && def.out !== undefined ? def.out : schema
}

/**
 * Marks a key's schema as a secret: `config check` and fileForm() leave it out. Secrets belong
 * in the environment or a file named in the config (as upstream.password_file), so this is for
 * a key that cannot be otherwise; it must be optional or have a default, so that what is
 * printed still loads.
 */
export function secret<S extends z.ZodType>(schema: S): S {
  SECRETS.add(schema)
  return schema
}

/** The parts of zod's schema definitions fileForm() reads. */
interface SchemaDef {
  type: string
  innerType?: z.ZodType
  element?: z.ZodType
  out?: z.ZodType
  shape?: Record<string, z.ZodType>
}

function defOf(schema: z.ZodType): SchemaDef {
  return schema._zod.def as unknown as SchemaDef
}

/** Whether a key's schema, or a schema it wraps (default, nullable...), is a secret. */
function isSecret(schema: z.ZodType): boolean {
  for (let node: z.ZodType | undefined = schema; node; node = defOf(node).innerType) {
    if (SECRETS.has(node)) return true
  }
  return false
}

/** `value`, parsed by `schema`, as the file that parses to it; secrets left out. */
export function toFileForm(schema: z.ZodType, value: unknown): unknown {
  return toFile(schema, value, '')
}

function toFile(schema: z.ZodType, value: unknown, path: string): unknown {
  const format = FILE_FORMS.get(formKey(schema))
  if (format) return format(value as never)
  const def = defOf(schema)
  switch (def.type) {
    case 'string':
    case 'number':
    case 'boolean':
    case 'enum':
    case 'literal':
    case 'null':
      return value
    case 'nullable':
      return value === null ? null : toFile(def.innerType!, value, path)
    case 'optional':
      return value === undefined ? undefined : toFile(def.innerType!, value, path)
    case 'default':
    case 'prefault':
    case 'readonly':
      return toFile(def.innerType!, value, path)
    case 'array':
      return (value as unknown[]).map((item, i) => toFile(def.element!, item, `${path}.${i}`))
    case 'object': {
      const out: Record<string, unknown> = {}
      const from = value as Record<string, unknown>
      for (const [key, child] of Object.entries(def.shape!)) {
        if (isSecret(child)) continue
        const written = toFile(child, from[key], path === '' ? key : `${path}.${key}`)
        if (written !== undefined) out[key] = written
      }
      return out
    }
    default:
      throw new Error(`${path || '(top level)'}: no file form for a ${def.type} schema`)
  }
}

/** The largest unit that divides `value` exactly, so that parsing the text gives `value` back. */
function inUnits(value: number, units: [string, number][]): string {
  if (value === 0) return `0${units.at(-1)![0]}`
  let best = `${value}${units.at(-1)![0]}`
  let smallest = value
  for (const [unit, factor] of units) {
    if (value % factor === 0 && value / factor < smallest) {
      smallest = value / factor
      best = `${smallest}${unit}`
    }
  }
  return best
}

/** 90_000 -> "90s", 3_600_000 -> "1h": text parseDuration reads back as the same number. */
export function formatDuration(ms: number): string {
  return inUnits(ms, [
    ['d', UNITS_MS.d!],
    ['h', UNITS_MS.h!],
    ['m', UNITS_MS.m!],
    ['s', UNITS_MS.s!],
    ['ms', 1],
  ])
}

/** 67_108_864 -> "64MiB", 5e10 -> "50GB": text parseSize reads back as the same number. */
export function formatSize(bytes: number): string {
  return inUnits(bytes, [
    ['TiB', UNITS_BYTES.tib!],
    ['GiB', UNITS_BYTES.gib!],
    ['MiB', UNITS_BYTES.mib!],
    ['KiB', UNITS_BYTES.kib!],
    ['TB', UNITS_BYTES.tb!],
    ['GB', UNITS_BYTES.gb!],
    ['MB', UNITS_BYTES.mb!],
    ['KB', UNITS_BYTES.kb!],
    ['B', 1],
  ])
}

/** How unitString's values are written back, by the parser that reads them. */
const FORMAT_OF = new Map<(text: string) => number | undefined, (value: number) => string>([
  [parseDuration, formatDuration],
  [parseSize, formatSize],
])

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

/**
 * A string in units, parsed by `parse`. `positive` refuses zero where zero would be a typo rather
 * than a setting: a timeout of 0 turns the timeout off, an interval of 0 is a busy loop, a budget
 * of 0 bytes empties the store. Given as a string, it says what zero would do, for the message.
 */
function unitString(
  parse: (text: string) => number | undefined,
  example: string,
  positive: boolean | string = false,
) {
  const format = FORMAT_OF.get(parse)
  if (format === undefined) throw new Error('unitString: no format for this parser')
  const schema = z.string().transform((text, ctx) => {
    const value = parse(text)
    if (value === undefined) {
      ctx.addIssue({ code: 'custom', message: `not ${example}: ${JSON.stringify(text)}` })
      return z.NEVER
    }
    if (positive !== false && value <= 0) {
      const why = typeof positive === 'string' ? ` (0 would ${positive})` : ''
      ctx.addIssue({ code: 'custom', message: `must be more than zero${why}: ${JSON.stringify(text)}` })
      return z.NEVER
    }
    return value
  })
  return writtenAs(schema, format)
}

const duration = unitString(parseDuration, 'a duration like "60s", "5m" or "500ms"')
const size = unitString(parseSize, 'a size like "64MiB" or "50GiB"')
// Node's timers take at most 2^31 - 1 ms (24.8 days); a longer delay fires after 1 ms instead, which
// turns a long interval into a busy loop and a long timeout into none.
const MAX_TIMER_MS = 2 ** 31 - 1
const timerLimit = {
  message: 'must be at most 24d: a longer delay is more than a timer can wait',
}
/** A duration a timer waits; `zeroWould` says what zero would do, which makes it a mistake. */
const timerDuration = (zeroWould?: string) =>
  unitString(parseDuration, 'a duration like "60s", "5m" or "500ms"', zeroWould ?? false).refine(
    (ms) => ms <= MAX_TIMER_MS,
    timerLimit,
  )

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
writtenAs(listen, ({ host, port }) =>
  host === '0.0.0.0' ? `:${port}` : host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`,
)

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
writtenAs(upstreamUrl, (origin) => origin)

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
writtenAs(tagPattern, (pattern) => pattern.text)

const nullableSize = unitString(
  parseSize,
  'a size like "50GiB"',
  'evict everything as soon as it is stored; null means no limit',
).nullable()
const nullableDuration = unitString(
  parseDuration,
  'a duration like "30d"',
  'evict everything as soon as it is stored; null means never',
).nullable()

const schema = z.strictObject({
  listen: listen.prefault(':5000'),
  data_dir: z.string().min(1).default('./data'),
  // Never contact upstream; uncached requests fail at once. Switchable at run time (SIGHUP).
  offline: z.boolean().default(false),
  // On SIGTERM: how long responses in flight may take to finish before connections are cut.
  // 0 is a choice: cut the connections at once.
  shutdown_grace: timerDuration().prefault('10s'),
  upstream: z
    .strictObject({
      url: upstreamUrl.prefault(DOCKER_HUB),
      username: z.string().min(1).nullable().default(null),
      password_file: z.string().min(1).nullable().default(null),
      connect_timeout: timerDuration('turn the timeout off').prefault('10s'),
      header_timeout: timerDuration('turn the timeout off').prefault('30s'),
      idle_timeout: timerDuration('turn the timeout off').prefault('30s'),
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
      revalidate_timeout: timerDuration('serve every cached tag stale without waiting').prefault('5s'),
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
      eviction_interval: timerDuration('run eviction in a busy loop').prefault('1m'),
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
  // What one client connection may hold, and for how long (src/http/limits.ts).
  limits: z
    .strictObject({
      header_timeout: timerDuration('leave a slow request head waiting forever').prefault('20s'),
      send_timeout: timerDuration('let a client that reads nothing hold its response forever').prefault(
        '60s',
      ),
      keepalive_timeout: timerDuration('close every keep-alive connection at once').prefault('65s'),
      max_connections: z.number().int().min(1).max(1_000_000).default(1024),
    })
    .prefault({}),
  index: z
    .strictObject({
      flush_interval: timerDuration('flush in a busy loop').prefault('1s'),
      // Hourly accounting rows older than this are pruned (every hour, in small batches). At
      // least an hour: a shorter retention would prune the hour being written.
      accounting_retention: duration
        .refine((ms) => ms >= 3_600_000, { message: 'must be at least 1h' })
        .prefault('30d'),
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
  PULLCACHE_HEADER_TIMEOUT: 'limits.header_timeout',
  PULLCACHE_SEND_TIMEOUT: 'limits.send_timeout',
  PULLCACHE_KEEPALIVE_TIMEOUT: 'limits.keepalive_timeout',
  PULLCACHE_MAX_CONNECTIONS: 'limits.max_connections',
  PULLCACHE_LOG_LEVEL: 'log.level',
  PULLCACHE_ACCESS_LOG: 'log.access',
  PULLCACHE_ACCOUNTING_RETENTION: 'index.accounting_retention',
}

const NUMERIC_KEYS = new Set([
  'upstream.max_concurrent_fetches',
  'upstream.connections',
  'limits.max_connections',
])
const BOOLEAN_KEYS = new Set(['log.access', 'offline', 'upstream.library_prefix'])

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

/**
 * The config as the file `--config` reads: loading it gives this config back (the password
 * aside, which never lives in the file). For `config check`; secrets are left out.
 */
export function fileForm(config: Config): Record<string, unknown> {
  return toFileForm(schema, config) as Record<string, unknown>
}

/** The environment variable that sets a config key, or undefined when none does. */
export function envNameOf(key: string): string | undefined {
  return Object.entries(ENV_KEYS).find(([, k]) => k === key)?.[0]
}

/** The schema, for the tests that walk every key. */
export { schema as configSchema }
