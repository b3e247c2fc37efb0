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
// any route ran (Node's HTTP parser) or with a bad query parameter.
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
  readonly kind: UpstreamFailure
  readonly status: number | undefined
  readonly retryAfter: string | undefined

  constructor(
    kind: UpstreamFailure,
    message: string,
    opts: { status?: number; retryAfter?: string | undefined; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? {} : { cause: opts.cause })
    this.name = 'UpstreamError'
    this.kind = kind
    this.status = opts.status
    this.retryAfter = opts.retryAfter
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
      default:
        return new RegistryError('UNAVAILABLE', this.message)
    }
  }
}
