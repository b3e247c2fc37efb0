// The config's schema: every key, its default and the text forms it accepts, validated in one
// pass so an operator sees every problem at once, each with its path; unknown keys are errors,
// not silently ignored. The value types that parse text (durations, sizes, listen addresses,
// the upstream URL, tag patterns, networks) are defined here with how each is written back.
// Where the values come from (file, environment, flags, secrets) is config.ts's.

import { isIP } from 'node:net'
import { z } from 'zod'
import { secret, writtenAs } from './config-file-form.js'
import { compileTagPattern } from './tag-pattern.js'
import { formatDuration, formatSize, parseDuration, parseSize } from './units.js'

export const DOCKER_HUB = 'https://registry-1.docker.io'

/** How unitString's values are written back, by the parser that reads them. */
const FORMAT_OF = new Map<(text: string) => number | undefined, (value: number) => string>([
  [parseDuration, formatDuration],
  [parseSize, formatSize],
])

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

/**
 * An http or https URL without credentials in it: a password in a URL ends up in logs and process
 * listings, so the operator is told where it goes instead (`credentialsGo`). `what` names the URL
 * in messages. Undefined (after an issue is added) when the text is not such a URL.
 */
function httpUrl(text: string, ctx: z.RefinementCtx, what: string, credentialsGo: string): URL | undefined {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    ctx.addIssue({ code: 'custom', message: `not a URL: ${text}` })
    return undefined
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    ctx.addIssue({ code: 'custom', message: `${what} must be http or https: ${text}` })
    return undefined
  }
  if (url.username || url.password) {
    ctx.addIssue({ code: 'custom', message: `put credentials in ${credentialsGo}, not the URL` })
    return undefined
  }
  return url
}

const upstreamUrl = z.string().transform((text, ctx) => {
  const url = httpUrl(text, ctx, 'upstream', 'upstream.username and a password file')
  if (url === undefined) return z.NEVER
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

/** "10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8": one network or address of admin.allow. */
const network = z.string().transform((text, ctx) => {
  const parsed = parseNetwork(text)
  if (parsed === undefined) {
    ctx.addIssue({ code: 'custom', message: `not an address or CIDR network like "10.0.0.0/8": ${text}` })
    return z.NEVER
  }
  return text.trim()
})
writtenAs(network, (text) => text)

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

/** An S3 endpoint: http or https, no credentials in it. */
const bucketEndpoint = z.string().transform((text, ctx) => {
  const url = httpUrl(
    text,
    ctx,
    'an S3 endpoint',
    'AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the key files',
  )
  return url === undefined ? z.NEVER : url.href.replace(/\/$/, '')
})
writtenAs(bucketEndpoint, (href) => href)

/**
 * Where a notification endpoint receives its events: http or https, no credentials in the URL
 * (they would end up in logs; a token goes in the endpoint's headers, which are never printed).
 */
const notifyUrl = z.string().transform((text, ctx) => {
  const url = httpUrl(text, ctx, 'a notification endpoint', "the endpoint's headers (e.g. Authorization)")
  return url === undefined ? z.NEVER : url.href
})
writtenAs(notifyUrl, (href) => href)

/** The events pullcache sends (src/notify/events.ts). */
export const NOTIFY_ACTIONS = ['pull', 'fill', 'evict'] as const

/** An HTTP header name: a token (RFC 9110), so a typo cannot smuggle a second header. */
const headerName = z.string().regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, 'not an HTTP header name')
/** A header value: no line breaks or other control characters. */
const headerValue = z.string().refine((text) => ![...text].some((ch) => ch < ' ' && ch !== '\t'), {
  message: 'a header value cannot hold line breaks or control characters',
})

const notifyEndpoint = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'a name of letters, digits, "_", "." or "-"'),
  url: notifyUrl,
  // Sent with every POST; values often carry a token, so they are a secret: `config check`
  // leaves them out and no log line ever holds them.
  headers: secret(z.record(headerName, headerValue).prefault({})),
  // How long one POST may take, response included.
  timeout: timerDuration('turn the timeout off').prefault('5s'),
  // The wait before the first retry; it doubles with each failure (with jitter), up to 1m.
  backoff: timerDuration('retry in a busy loop').prefault('1s'),
  // Tries per batch of events before it is given up and counted as failed.
  max_attempts: z.number().int().min(1).max(100).default(5),
  // Events waiting to be sent; when full the oldest goes (counted as dropped).
  queue: z.number().int().min(1).max(1_000_000).default(1000),
  // The actions this endpoint gets.
  events: z.array(z.enum(NOTIFY_ACTIONS)).prefault([...NOTIFY_ACTIONS]),
  ignore: z
    .strictObject({
      media_types: z.array(z.string().min(1)).prefault([]),
      actions: z.array(z.enum(NOTIFY_ACTIONS)).prefault([]),
    })
    .prefault({}),
})

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
  auth: z
    .strictObject({
      // htpasswd file of client accounts (bcrypt entries, as `htpasswd -B` writes); re-read on
      // SIGHUP. null: no accounts, every client is anonymous.
      htpasswd: z.string().min(1).nullable().default(null),
      // Whether clients without an account may pull what anonymous pulls upstream may read.
      anonymous: z.boolean().default(true),
    })
    .prefault({}),
  // TLS on the listener (src/tls.ts): PEM files, re-read on SIGHUP. null cert and key: plain HTTP.
  tls: z
    .strictObject({
      cert: z.string().min(1).nullable().default(null),
      key: z.string().min(1).nullable().default(null),
      // CA certificates client certificates are checked against; a verified client certificate
      // signs its client in, as an htpasswd account does.
      client_ca: z.string().min(1).nullable().default(null),
      // 'none', 'optional' (a client with a certificate is signed in by it) or 'require' (no
      // handshake without one). null: 'optional' when client_ca is set, 'none' otherwise.
      client_auth: z.enum(['none', 'optional', 'require']).nullable().default(null),
    })
    .prefault({}),
  admin: z
    .strictObject({
      // Networks allowed to reach the status page, /_pullcache/* and /metrics (health checks
      // excepted); empty: no restriction.
      allow: z.array(network).prefault([]),
    })
    .prefault({}),
  // Webhooks, as distribution's notifications.endpoints: a JSON envelope of events POSTed to
  // each endpoint, best effort (src/notify/). Reloaded on SIGHUP.
  notifications: z
    .strictObject({
      endpoints: z
        .array(notifyEndpoint)
        .refine((list) => new Set(list.map((e) => e.name)).size === list.length, {
          message: 'endpoint names must be unique',
        })
        .prefault([]),
    })
    .prefault({}),
  // Where blob bytes live: the local data dir alone, or an S3-compatible bucket behind it (the
  // data dir then is the hot tier and the index; store/shared-tier.ts). The keys are a secret's
  // neighbours, never the secret: credentials come from AWS_ACCESS_KEY_ID and
  // AWS_SECRET_ACCESS_KEY or from the files named here.
  storage: z
    .strictObject({
      type: z.enum(['local', 's3']).default('local'),
      s3: z
        .strictObject({
          // null: AWS S3 itself, by region.
          endpoint: bucketEndpoint.nullable().default(null),
          bucket: z
            .string()
            .regex(
              /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/,
              'a bucket name of 3-63 lowercase letters, digits, "." or "-"',
            )
            .nullable()
            .default(null),
          // Keys go under it: "<prefix>blobs/sha256/..."; "" for the bucket's root.
          prefix: z
            .string()
            .regex(/^([A-Za-z0-9._-]+\/)*$/, 'path segments each ending in "/", like "pullcache/"')
            .default(''),
          region: z.string().min(1).default('us-east-1'),
          // Bucket in the path (http://host/bucket/key), as MinIO, Ceph and Swift want by default.
          force_path_style: z.boolean().default(false),
          access_key_id_file: z.string().min(1).nullable().default(null),
          secret_access_key_file: z.string().min(1).nullable().default(null),
          // Multipart uploads older than this are a dead process's: the janitor aborts them.
          abandoned_upload_age: timerDuration('abort uploads still being written').prefault('6h'),
        })
        .prefault({}),
    })
    .refine((s) => s.type !== 's3' || s.s3.bucket !== null, {
      message: 'S3 storage needs a bucket (storage.s3.bucket or PULLCACHE_S3_BUCKET)',
      path: ['s3', 'bucket'],
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
      access: z.boolean().default(true),
    })
    .prefault({}),
})

/** The schema, for config.ts and for the tests that walk every key. */
export { schema as configSchema }
