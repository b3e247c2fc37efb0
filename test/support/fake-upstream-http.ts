// The wire vocabulary the fake upstream's handlers answer in. Handlers return a Reply instead of
// writing to the socket, so that one place (FakeUpstream's send) can apply body faults to any of them.

// Header names are lower-case throughout so that fault headers override, never duplicate, them.
export type Headers = Record<string, string>

export interface Reply {
  status: number
  headers: Headers
  // Also computed for HEAD: Content-Length must be the GET length, only the bytes are withheld.
  body: Uint8Array
}

const EMPTY = new Uint8Array(0)

// distribution's messages (registry/api/errcode, registry/api/v2/errors.go) and Hub's 429 text.
const MESSAGES: Record<string, string> = {
  UNAUTHORIZED: 'authentication required',
  DENIED: 'requested access to the resource is denied',
  NAME_UNKNOWN: 'repository name not known to registry',
  NAME_INVALID: 'invalid repository name',
  MANIFEST_UNKNOWN: 'manifest unknown',
  BLOB_UNKNOWN: 'blob unknown to registry',
  TAG_INVALID: 'manifest tag did not match URI',
  DIGEST_INVALID: 'provided digest did not match uploaded content',
  PAGINATION_NUMBER_INVALID: 'invalid number of results requested',
  UNSUPPORTED: 'The operation is unsupported.',
  TOOMANYREQUESTS:
    'You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limits',
  UNAVAILABLE: 'service unavailable',
  UNKNOWN: 'unknown error',
}

export function json(status: number, value: unknown, headers: Headers = {}): Reply {
  return {
    status,
    headers: { 'content-type': 'application/json', ...headers },
    body: new TextEncoder().encode(JSON.stringify(value)),
  }
}

export function text(status: number, body: string, headers: Headers = {}): Reply {
  return {
    status,
    headers: { 'content-type': 'text/plain; charset=utf-8', ...headers },
    body: new TextEncoder().encode(body),
  }
}

export function empty(status: number, headers: Headers = {}): Reply {
  return { status, headers, body: EMPTY }
}

export function ociError(status: number, code: string, detail: unknown = null, headers: Headers = {}): Reply {
  return json(status, { errors: [{ code, message: MESSAGES[code] ?? MESSAGES.UNKNOWN, detail }] }, headers)
}

// The code distribution would put on a response of this status, for status faults given no body.
export function codeForStatus(status: number, path: string): string {
  switch (status) {
    case 401:
      return 'UNAUTHORIZED'
    case 403:
      return 'DENIED'
    case 404:
      if (path.includes('/manifests/')) return 'MANIFEST_UNKNOWN'
      if (path.includes('/blobs/')) return 'BLOB_UNKNOWN'
      return 'NAME_UNKNOWN'
    case 405:
      return 'UNSUPPORTED'
    case 429:
      return 'TOOMANYREQUESTS'
    case 503:
      return 'UNAVAILABLE'
    default:
      return 'UNKNOWN'
  }
}

export type RangeResult =
  | { kind: 'full' }
  | { kind: 'partial'; start: number; end: number }
  | { kind: 'unsatisfiable' }

// RFC 9110 §14: one range `a-b`, `a-` or `-n`. A malformed header, or several ranges, is ignored and
// the whole body served with 200, which the RFC allows and which is what the protocol notes say
// mirrors should expect from upstreams.
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (header === undefined) return { kind: 'full' }
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (m === null) return { kind: 'full' }
  const [, a = '', b = ''] = m
  if (a === '' && b === '') return { kind: 'full' }
  if (a === '') {
    const suffix = Number(b)
    if (suffix === 0 || size === 0) return { kind: 'unsatisfiable' }
    return { kind: 'partial', start: Math.max(0, size - suffix), end: size - 1 }
  }
  const start = Number(a)
  const end = b === '' ? size - 1 : Math.min(Number(b), size - 1)
  if (b !== '' && Number(b) < start) return { kind: 'full' }
  if (start >= size) return { kind: 'unsatisfiable' }
  return { kind: 'partial', start, end }
}

// Serves bytes honouring Range; `headers` are those of a full 200 (minus Content-Length).
export function bytesReply(bytes: Uint8Array, range: string | undefined, headers: Headers): Reply {
  const r = parseRange(range, bytes.length)
  const withRanges = { ...headers, 'accept-ranges': 'bytes' }
  if (r.kind === 'full') return { status: 200, headers: withRanges, body: bytes }
  if (r.kind === 'unsatisfiable') {
    return empty(416, { ...withRanges, 'content-range': `bytes */${bytes.length}` })
  }
  return {
    status: 206,
    headers: { ...withRanges, 'content-range': `bytes ${r.start}-${r.end}/${bytes.length}` },
    body: bytes.subarray(r.start, r.end + 1),
  }
}
