// One table of OCI error codes and the status each one answers with. Routes and the mirror
// throw RegistryError; app.onError is the single place that renders them. Codes are for code,
// messages are for people, detail says what exactly was wrong with this request.
//
// A code always answers with its status here: RegistryError takes no status of its own, so a
// client (and a log reader) can trust that one code means one status. The codes down to
// TOOMANYREQUESTS are the OCI distribution-spec's and distribution's errcode's. Two statuses
// differ from distribution, which answers pushes: MANIFEST_INVALID is the upstream's fault on
// a mirror (502, not 400), and UNAVAILABLE is upstream being unreachable. The codes after
// UNKNOWN are pullcache's own, for answers no spec code describes: an endpoint that does not
// exist (distribution answers that with a bare 404 and no body) and requests refused before
// any route ran (Node's HTTP parser) or with a bad query parameter, and a request that came round
// a loop of mirrors (src/via.ts).
export const OCI_ERRORS = deepFreeze({
  BLOB_UNKNOWN: { status: 404, message: 'blob unknown to registry' },
  MANIFEST_UNKNOWN: { status: 404, message: 'manifest unknown' },
  NAME_UNKNOWN: { status: 404, message: 'repository name not known to registry' },
  NAME_INVALID: { status: 400, message: 'invalid repository name' },
  TAG_INVALID: { status: 400, message: 'manifest tag did not match URI' },
  DIGEST_INVALID: { status: 400, message: 'provided digest did not match uploaded content' },
  MANIFEST_INVALID: { status: 502, message: 'manifest invalid' },
  PAGINATION_NUMBER_INVALID: { status: 400, message: 'invalid number of results requested' },
  RANGE_INVALID: { status: 416, message: 'invalid content range' },
  UNSUPPORTED: { status: 405, message: 'The operation is unsupported.' },
  UNAUTHORIZED: { status: 401, message: 'authentication required' },
  DENIED: { status: 403, message: 'requested access to the resource is denied' },
  TOOMANYREQUESTS: { status: 429, message: 'too many requests' },
  UNAVAILABLE: { status: 503, message: 'upstream unavailable' },
  UNKNOWN: { status: 500, message: 'unknown error' },
  // pullcache's own codes:
  NOT_FOUND: { status: 404, message: 'no such endpoint' },
  REQUEST_INVALID: { status: 400, message: 'malformed request' },
  REQUEST_TIMEOUT: { status: 408, message: 'request head not received in time' },
  REQUEST_TOO_LARGE: { status: 413, message: 'request too large' },
  HEADERS_TOO_LARGE: { status: 431, message: 'request line or headers too large' },
  LOOP_DETECTED: {
    status: 508,
    message: "request loop: this pullcache is already on the request's path (Via)",
  },
} as const)

function deepFreeze<T extends Record<string, object>>(table: T): T {
  for (const entry of Object.values(table)) Object.freeze(entry)
  return Object.freeze(table)
}

export type OciCode = keyof typeof OCI_ERRORS

/** The status a code answers with: the table's, and no other. */
export type OciStatus<C extends OciCode> = (typeof OCI_ERRORS)[C]['status']

export class RegistryError<C extends OciCode = OciCode> extends Error {
  readonly code: C
  readonly status: OciStatus<C>
  readonly detail: unknown
  /** Extra response headers, e.g. Retry-After on TOOMANYREQUESTS. */
  readonly headers: Record<string, string>

  constructor(
    code: C,
    detail?: unknown,
    opts: { message?: string; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(opts.message ?? OCI_ERRORS[code].message, opts.cause === undefined ? {} : { cause: opts.cause })
    this.name = 'RegistryError'
    this.code = code
    this.status = OCI_ERRORS[code].status
    this.detail = detail ?? null
    this.headers = opts.headers ?? {}
  }

  body(): string {
    return JSON.stringify({ errors: [{ code: this.code, message: this.message, detail: this.detail }] })
  }
}

/**
 * Why an upstream exchange failed, as a stable code. The mirror decides from the kind alone
 * whether a cached copy may be served instead (every kind but NOT_FOUND counts as "upstream is
 * unwell" for stale-if-error).
 */
export type UpstreamFailure =
  | 'NOT_FOUND' // 404: the upstream says the thing does not exist
  | 'UNAUTHORIZED' // 401/403 after a fresh token: credentials or scope are wrong
  | 'RATE_LIMITED' // 429
  | 'SERVER' // 5xx or an answer we cannot use
  | 'NETWORK' // refused, reset, DNS, TLS
  | 'TIMEOUT' // connect, header or idle timeout
  | 'AUTH_SERVER' // the token endpoint failed
  | 'CREDENTIALS' // the token endpoint refused pullcache's configured account
  | 'OFFLINE' // pullcache is offline on purpose and did not ask
  | 'INVALID' // bytes that do not match their digest or size

export class UpstreamError extends Error {
  /** The kind with a prefix, so that a log line or a switch over codes cannot take it for an OCI code. */
  readonly code: `UPSTREAM_${UpstreamFailure}`
  readonly kind: UpstreamFailure
  readonly status: number | undefined
  readonly retryAfter: string | undefined
  /** What exactly was wrong, for the client's error body (INVALID: expected and actual digest). */
  readonly detail: unknown

  constructor(
    kind: UpstreamFailure,
    message: string,
    opts: { status?: number; retryAfter?: string | undefined; cause?: unknown; detail?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? {} : { cause: opts.cause })
    this.name = 'UpstreamError'
    this.code = `UPSTREAM_${kind}`
    this.kind = kind
    this.status = opts.status
    this.retryAfter = opts.retryAfter
    this.detail = opts.detail ?? this.message
  }

  /** How this failure reaches a client that has no cached copy to fall back on. */
  toRegistryError(notFound: OciCode): RegistryError {
    switch (this.kind) {
      case 'NOT_FOUND':
        return new RegistryError(notFound, this.message)
      case 'UNAUTHORIZED':
        // Docker Hub answers 401 for repositories that do not exist; to a mirror client that is
        // "not here", and dockerd then falls back to the upstream on its own terms.
        return new RegistryError(notFound, `upstream refused access: ${this.message}`)
      case 'OFFLINE':
        return new RegistryError('UNAVAILABLE', 'pullcache is offline and this is not cached', {
          message: 'pullcache is offline',
        })
      case 'CREDENTIALS':
        // An operator problem, not the client's: say so, and let dockerd fall back meanwhile.
        return new RegistryError('UNAVAILABLE', this.message)
      case 'RATE_LIMITED':
        return new RegistryError('TOOMANYREQUESTS', this.message, {
          headers: this.retryAfter === undefined ? {} : { 'Retry-After': this.retryAfter },
        })
      case 'INVALID':
        // Upstream's fault, not the client's. A manifest has a code for it; a blob does not, and
        // UNAVAILABLE has clients retry or fall back to the upstream, as for any unusable answer.
        if (notFound === 'MANIFEST_UNKNOWN') {
          return new RegistryError('MANIFEST_INVALID', this.detail, { message: this.message })
        }
        return new RegistryError('UNAVAILABLE', this.message)
      default:
        return new RegistryError('UNAVAILABLE', this.message)
    }
  }
}

// What Node and undici call a failed exchange, by error code. TIMEOUT and NETWORK differ only in
// the message and in the stats; both count as "upstream is unwell".
const TIMEOUT_CODES = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ETIMEDOUT',
])
const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
])

/**
 * Whether `err` came from the network (a socket, DNS, TLS, undici) rather than from the disk or
 * from pullcache itself. A fill reads the upstream body and writes a file in one loop: only the
 * first kind is upstream's fault.
 */
export function isNetworkError(err: unknown): boolean {
  if (err instanceof UpstreamError) return true
  const code = codeOf(err)
  return (
    TIMEOUT_CODES.has(code) ||
    NETWORK_CODES.has(code) ||
    code.startsWith('UND_ERR') ||
    code.startsWith('ERR_TLS_') ||
    code.startsWith('ERR_SSL_') ||
    code.startsWith('CERT_') ||
    code.startsWith('UNABLE_TO_') ||
    code.endsWith('_SELF_SIGNED_CERT') ||
    code === 'SELF_SIGNED_CERT_IN_CHAIN'
  )
}

/**
 * The one mapping from a failed upstream exchange to an UpstreamError: a timeout code is
 * TIMEOUT, anything else NETWORK (an exchange that failed without an answer is the network's
 * failure, whatever its code). An UpstreamError (a deadline's abort reason) passes unchanged.
 */
export function networkFailure(err: unknown, what = 'upstream'): UpstreamError {
  if (err instanceof UpstreamError) return err
  const code = codeOf(err)
  const kind: UpstreamFailure = TIMEOUT_CODES.has(code) ? 'TIMEOUT' : 'NETWORK'
  const reason = code || (err instanceof Error ? err.message : String(err))
  return new UpstreamError(kind, `${what} ${kind === 'TIMEOUT' ? 'timed out' : 'unreachable'}: ${reason}`, {
    cause: err,
  })
}

function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null | undefined)?.code
  return typeof code === 'string' ? code : ''
}
