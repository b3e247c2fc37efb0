// The value types of the config: the text forms its values accept (durations, sizes, listen
// addresses, URLs, registry hosts, tag patterns, networks, notification endpoints), each parsed
// with a clear message and written back as people write it (config-file-form.ts). The tree of
// keys that uses them is config-schema.ts.

import { isIP } from 'node:net'
import { z } from 'zod'
import { secret, writtenAs } from './config-file-form.js'
import { isRegistryHost } from './oci.js'
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

export const duration = unitString(parseDuration, 'a duration like "60s", "5m" or "500ms"')
export const size = unitString(parseSize, 'a size like "64MiB" or "50GiB"')
// Node's timers take at most 2^31 - 1 ms (24.8 days); a longer delay fires after 1 ms instead, which
// turns a long interval into a busy loop and a long timeout into none.
const MAX_TIMER_MS = 2 ** 31 - 1
const timerLimit = {
  message: 'must be at most 24d: a longer delay is more than a timer can wait',
}
/** A duration a timer waits; `zeroWould` says what zero would do, which makes it a mistake. */
export const timerDuration = (zeroWould?: string) =>
  unitString(parseDuration, 'a duration like "60s", "5m" or "500ms"', zeroWould ?? false).refine(
    (ms) => ms <= MAX_TIMER_MS,
    timerLimit,
  )

/** "host:port", ":port" or "[::1]:port". */
export const listen = z.string().transform((text, ctx) => {
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

export const upstreamUrl = z.string().transform((text, ctx) => {
  const url = httpUrl(text, ctx, 'upstream', 'upstream.username and a password file')
  if (url === undefined) return z.NEVER
  if (url.search || url.hash || (url.pathname !== '/' && url.pathname !== '')) {
    ctx.addIssue({ code: 'custom', message: `upstream must be a registry root like ${DOCKER_HUB}: ${text}` })
    return z.NEVER
  }
  return url.origin
})
writtenAs(upstreamUrl, (origin) => origin)

/** A cluster node's URL, as the other nodes reach it: a root like http://10.0.0.5:5000. */
export const nodeUrl = z.string().transform((text, ctx) => {
  const url = httpUrl(text, ctx, 'a cluster node URL', 'cluster.secret_file')
  if (url === undefined) return z.NEVER
  if (url.search || url.hash || (url.pathname !== '/' && url.pathname !== '')) {
    ctx.addIssue({
      code: 'custom',
      message: `a cluster node URL must be a root like http://10.0.0.5:5000: ${text}`,
    })
    return z.NEVER
  }
  return url.origin
})
writtenAs(nodeUrl, (origin) => origin)

/**
 * A tag pattern: a glob over "repo:tag" ("*:latest", "library/*:*"), a glob over the tag alone
 * when it has no ':' ("latest", "v*"), or a regular expression over the tag in slashes
 * ("/^v?\\d+\\.\\d+\\.\\d+$/"). `*` matches within one path component; `**` across '/'.
 */
export const tagPattern = z.string().transform((text, ctx) => {
  const compiled = compileTagPattern(text)
  if (compiled === undefined) {
    ctx.addIssue({ code: 'custom', message: `not a valid pattern: ${text}` })
    return z.NEVER
  }
  return { text, test: compiled }
})
writtenAs(tagPattern, (pattern) => pattern.text)

/** "10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8": one network or address of admin.allow. */
export const network = z.string().transform((text, ctx) => {
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
export const bucketEndpoint = z.string().transform((text, ctx) => {
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

export const notifyEndpoint = z.strictObject({
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

export const nullableSize = unitString(
  parseSize,
  'a size like "50GiB"',
  'evict everything as soon as it is stored; null means no limit',
).nullable()
export const nullableDuration = unitString(
  parseDuration,
  'a duration like "30d"',
  'evict everything as soon as it is stored; null means never',
).nullable()

/**
 * A registry's name as clients write it: a lowercase host, with a port if not the default
 * ("ghcr.io", "registry.example.com:5443", "localhost:5000"). It must look like a host (a '.',
 * a ':' or "localhost"): that is how a path's first component is told from a Docker Hub
 * namespace, which never has either.
 */
export const registryHost = z
  .string()
  .regex(
    /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::\d{1,5})?$/,
    'not a registry host like "ghcr.io" or "registry.example.com:5443" (lowercase, no scheme or path)',
  )
  .refine(isRegistryHost, {
    message:
      'a registry host needs a "." or a port, or is "localhost" (a bare word is a Docker Hub namespace)',
  })

/** How pullcache reaches one upstream: its account and its connection limits. */
export const UPSTREAM_CONNECTION = {
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
}

/** One of `upstreams`: a registry beside the root one, named by its host. */
export const otherUpstream = z.strictObject({
  host: registryHost,
  url: upstreamUrl,
  ...UPSTREAM_CONNECTION,
  // Off here: only Docker Hub keeps one-component names under library/.
  library_prefix: z.boolean().default(false),
  // This registry's tag freshness; unset: cache.tag_freshness (tag_freshness_rules apply first).
  tag_freshness: duration.optional(),
  // The most of cache.max_size the blobs only this registry's repositories use may take (0.25:
  // a quarter); over it, its least recently used blobs go first. Unset: no share of its own.
  budget_share: z.number().gt(0).max(1).optional(),
})
