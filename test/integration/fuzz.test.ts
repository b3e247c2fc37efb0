// Fuzzed requests against an in-process pullcache in front of the fake upstream, on raw sockets
// so nothing normalises them on the way: names, references, digests, headers, ranges, methods,
// malformed request heads, and several requests pipelined on one connection. Properties:
//   - pullcache never crashes, never answers 5xx, never logs an internal error;
//   - every 4xx (but to HEAD) carries a well-formed OCI error body; a 416 says Content-Range;
//   - every request that reaches upstream is well-formed: a name of the OCI grammar of at most
//     255 characters, a sha256 digest or a valid tag.
// PULLCACHE_FUZZ_REQUESTS sets the size (default 2500 requests, about half a minute);
// `PULLCACHE_FUZZ_REQUESTS=100000 npx vitest run test/integration/fuzz.test.ts` is the full run.
import { connect } from 'node:net'
import fc from 'fast-check'
import { beforeAll, expect, test } from 'vitest'
import type { AddedImage } from '../support/fake-upstream.js'
import { NAME_RE, TAG_RE } from '../support/fake-upstream-content.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'

const REQUESTS = Number(process.env.PULLCACHE_FUZZ_REQUESTS ?? 2500)
/** A run is one connection carrying 1 to 4 requests, 2.5 on average. */
const RUNS = Math.max(1, Math.ceil(REQUESTS / 2.5))
const SEED =
  process.env.PULLCACHE_FUZZ_SEED === undefined ? undefined : Number(process.env.PULLCACHE_FUZZ_SEED)

const fake = useFakeUpstream()
let image: AddedImage
let mirror: TestMirror

beforeAll(async () => {
  image = fake.up.addImage('library/fuzz', 'latest', { layers: 2, layerBytes: 4096 })
  fake.up.addImage('org/app', 'v1.2', { layers: 1, layerBytes: 2048 })
})

// ---- generators ------------------------------------------------------------------------------

const lower = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789')
const component = fc
  .tuple(
    fc.string({ unit: lower, minLength: 1, maxLength: 8 }),
    fc.option(
      fc.tuple(
        fc.constantFrom('.', '_', '__', '-', '--'),
        fc.string({ unit: lower, minLength: 1, maxLength: 8 }),
      ),
    ),
  )
  .map(([a, rest]) => (rest ? `${a}${rest[0]}${rest[1]}` : a))
const validName = fc.oneof(
  fc.constantFrom('fuzz', 'library/fuzz', 'org/app', 'a', 'library/x'),
  fc.array(component, { minLength: 1, maxLength: 4 }).map((c) => c.join('/')),
)
const nastyPiece = fc.constantFrom(
  '',
  '..',
  '.',
  '%2e%2e',
  '%2F',
  '%2f',
  '%00',
  '%',
  '%zz',
  'A',
  'UPPER',
  '-a',
  'a-',
  'a_',
  '_',
  'é',
  '\u00ff',
  ' ',
  '%20',
  'a b',
  ';',
  '?',
  '#',
  '\\',
  '*',
  '@',
  'a:b',
)
const longName = fc
  .integer({ min: 240, max: 600 })
  .chain((n) => fc.constantFrom('a'.repeat(n), `${'a/'.repeat(Math.floor(n / 2))}a`, `org/${'b'.repeat(n)}`))
const name = fc.oneof(
  { weight: 4, arbitrary: validName },
  {
    weight: 2,
    arbitrary: fc
      .array(fc.oneof(component, nastyPiece), { minLength: 1, maxLength: 4 })
      .map((c) => c.join('/')),
  },
  { weight: 1, arbitrary: longName },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map((s) => encodeURIComponent(s)) },
)

const hex = fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: 64, maxLength: 64 })
function knownDigests(): string[] {
  return [image.manifestDigest, image.configDigest, ...image.layers.map((l) => l.digest)]
}
const digest = fc.oneof(
  // The image exists only once beforeAll ran: picked by index when a value is generated.
  { weight: 3, arbitrary: fc.nat(3).map((i) => knownDigests()[i]!) },
  { weight: 2, arbitrary: hex.map((h) => `sha256:${h}`) },
  {
    weight: 2,
    arbitrary: fc.oneof(
      hex.map((h) => `sha256:${h.slice(0, 63)}`),
      hex.map((h) => `sha256:${h}0`),
      hex.map((h) => `sha256:${h.toUpperCase()}`),
      hex.map((h) => `sha512:${h}${h}`),
      hex.map((h) => `sha256%3A${h}`),
      hex.map((h) => `sha256:${h.slice(0, 60)}%2F..`),
      fc.constantFrom('sha256:', ':', 'sha256', 'md5:abc', 'sha256:../../etc/passwd', '..', '%00'),
    ),
  },
)
const tag = fc.oneof(
  fc.constantFrom('latest', 'v1.2', 'missing', '.hidden', '-x', 'a'.repeat(128), 'a'.repeat(129), 'T_1.0-rc'),
  fc.string({ unit: fc.constantFrom(...'abcXYZ019._-:%/'), minLength: 0, maxLength: 20 }),
)
const reference = fc.oneof(digest, tag)

const range = fc.oneof(
  fc.tuple(fc.nat(10_000), fc.option(fc.nat(10_000))).map(([a, b]) => `bytes=${a}-${b ?? ''}`),
  fc.nat(10_000).map((n) => `bytes=-${n}`),
  fc.constantFrom(
    'bytes=',
    'bytes=-',
    'bytes=0-0,5-9',
    'items=0-1',
    'bytes=abc',
    'bytes=5-1',
    'bytes=99999999999999999999-',
  ),
  fc.string({ maxLength: 30 }).map((s) => s.replace(/[\r\n]/g, '')),
)
const headerValue = fc.string({ maxLength: 60 }).map((s) => s.replace(/[\r\n\0]/g, ''))
const extraHeaders = fc.record(
  {
    range,
    'if-none-match': fc.oneof(
      digest.map((d) => `"${d}"`),
      headerValue,
    ),
    accept: fc.oneof(
      fc.constantFrom(
        'application/vnd.oci.image.index.v1+json',
        'application/vnd.docker.distribution.manifest.v2+json',
        '*/*',
        '',
      ),
      headerValue,
    ),
    'x-fuzz': headerValue,
  },
  { requiredKeys: [] },
)
const query = fc.oneof(
  fc.constant(''),
  fc.constantFrom(
    '?ns=docker.io',
    '?ns=ghcr.io',
    '?ns=',
    '?n=2',
    '?n=-1',
    '?n=abc',
    '?last=a&n=1',
    '?%zz',
    '?ns=%',
  ),
  fc.string({ maxLength: 20 }).map((s) => `?${encodeURIComponent(s)}`),
)
const method = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom('GET', 'HEAD') },
  { weight: 2, arbitrary: fc.constantFrom('PUT', 'POST', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE') },
)
const path = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(name, digest, query).map(([n, d, q]) => `/v2/${n}/blobs/${d}${q}`) },
  {
    weight: 4,
    arbitrary: fc.tuple(name, reference, query).map(([n, r, q]) => `/v2/${n}/manifests/${r}${q}`),
  },
  { weight: 1, arbitrary: fc.tuple(name, query).map(([n, q]) => `/v2/${n}/tags/list${q}`) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '/v2/',
      '/v2',
      '/',
      '/metrics',
      '/v2/_catalog',
      '/_pullcache/health',
      '/v2/library/fuzz/blobs/uploads/',
      '//v2//library//fuzz',
      '/v2/../v2/',
      '*',
    ),
  },
  {
    weight: 1,
    arbitrary: fc.integer({ min: 2_000, max: 20_000 }).map((n) => `/v2/${'a'.repeat(n)}/manifests/latest`),
  },
)

interface Sent {
  method: string
  wire: string
}
const wellFormed = fc.tuple(method, path, extraHeaders).map(([m, p, h]): Sent => {
  const lines = [`${m} ${p} HTTP/1.1`, 'Host: 127.0.0.1']
  for (const [k, v] of Object.entries(h)) lines.push(`${k}: ${v}`)
  return { method: m, wire: `${lines.join('\r\n')}\r\n` }
})
const malformed = fc
  .oneof(
    fc.constantFrom(
      'FOO / HTTP/1.1\r\nHost: x\r\n',
      'GET / HTTP/1.1\r\n',
      'GET /v2/ HTTP/1.0\r\n',
      'GET /v2/ HTTP/2.0\r\nHost: x\r\n',
      'GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n',
      'GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      'GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n',
      'GET /v2/ HTTP/1.1\r\nHost: x\r\n folded: value\r\n',
      'GET http://evil.example/v2/ HTTP/1.1\r\nHost: x\r\n',
      'CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n',
      'GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n',
      'GET /v2/\0 HTTP/1.1\r\nHost: x\r\n',
      '\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03',
      `GET /v2/ HTTP/1.1\r\nHost: x\r\nX: ${'a'.repeat(20_000)}\r\n`,
      'GET /v2/ HTTP/1.1\r\nHost: [::1\r\n',
      'GET /v2/ HTTP/1.1\r\nHost: x\r\nHost: y\r\n',
      ' GET /v2/ HTTP/1.1\r\nHost: x\r\n',
      'GET  /v2/  HTTP/1.1\r\nHost: x\r\n',
    ),
    fc.string({ unit: 'binary', maxLength: 200 }),
    fc
      .tuple(fc.string({ maxLength: 12 }), fc.string({ maxLength: 40 }), fc.string({ maxLength: 12 }))
      .map(([m, p, v]) => `${m} ${p} ${v}\r\nHost: x\r\n`),
  )
  .map((wire): Sent => ({ method: 'MALFORMED', wire }))

/** One connection: well-formed requests, pipelined, and sometimes a malformed one last. */
const connection = fc.tuple(
  fc.array(wellFormed, { minLength: 1, maxLength: 4 }),
  fc.option(malformed, { freq: 5 }),
)

// ---- the wire --------------------------------------------------------------------------------

interface Answer {
  status: number
  headers: Record<string, string>
  body: Buffer
}

function exchange(url: string, requests: Sent[]): Promise<Buffer> {
  const { hostname, port } = new URL(url)
  const last = requests.length - 1
  const wire = requests.map((r, i) => `${r.wire}${i === last ? 'Connection: close\r\n' : ''}`).join('\r\n')
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => {
      // A malformed head may stop anywhere: the blank lines end most; the header deadline (1 s
      // here) ends the rest.
      socket.write(`${wire}\r\n\r\n`, 'latin1')
    })
    const chunks: Buffer[] = []
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`connection not closed within 10 s: ${JSON.stringify(wire.slice(0, 300))}`))
    }, 10_000)
    socket.on('data', (d: Buffer) => chunks.push(d))
    socket.on('error', () => {})
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(Buffer.concat(chunks))
    })
  })
}

/** Splits pipelined HTTP/1.1 answers; `heads` says which were answers to HEAD (no body). */
function parseAnswers(data: Buffer, heads: boolean[]): Answer[] {
  const out: Answer[] = []
  let at = 0
  while (at < data.length) {
    const end = data.indexOf('\r\n\r\n', at)
    if (end === -1)
      throw new Error(`truncated head: ${JSON.stringify(data.toString('latin1', at, at + 200))}`)
    const [statusLine, ...lines] = data.toString('latin1', at, end).split('\r\n')
    const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(statusLine ?? '')?.[1])
    if (!Number.isInteger(status)) throw new Error(`bad status line: ${JSON.stringify(statusLine)}`)
    const headers: Record<string, string> = {}
    for (const line of lines) {
      const colon = line.indexOf(':')
      headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
    }
    at = end + 4
    // An answer to HEAD has no body, unless the parser refused the request before its method
    // was known: that error answer has one, and no answer starts with '{'.
    const headAnswer = heads[out.length] === true && data[at] !== 0x7b
    const noBody = headAnswer || status === 304 || status === 204
    let body: Buffer = Buffer.alloc(0)
    if (!noBody && headers['transfer-encoding'] === 'chunked') {
      const parts: Buffer[] = []
      for (;;) {
        const lineEnd = data.indexOf('\r\n', at)
        const size = Number.parseInt(data.toString('latin1', at, lineEnd), 16)
        at = lineEnd + 2
        if (size === 0) {
          at += 2
          break
        }
        parts.push(data.subarray(at, at + size))
        at += size + 2
      }
      body = Buffer.concat(parts)
    } else if (!noBody && headers['content-length'] !== undefined) {
      const n = Number(headers['content-length'])
      body = data.subarray(at, at + n)
      if (body.length !== n) throw new Error(`short body: ${body.length} of ${n}`)
      at += n
    } else if (!noBody) {
      body = data.subarray(at)
      at = data.length
    }
    out.push({ status, headers, body })
  }
  return out
}

function checkAnswer(sent: Sent, answer: Answer): void {
  const what = `${JSON.stringify(sent.wire.slice(0, 200))} -> ${answer.status}`
  expect(answer.status, what).toBeGreaterThanOrEqual(200)
  expect(answer.status, what).toBeLessThan(500)
  if (answer.status >= 400 && sent.method !== 'HEAD') {
    expect(answer.headers['content-type'], what).toBe('application/json')
    const body = JSON.parse(answer.body.toString('utf8')) as { errors?: unknown }
    expect(Array.isArray(body.errors), what).toBe(true)
    const first = (body.errors as { code: unknown; message: unknown }[])[0]
    expect(first?.code, what).toMatch(/^[A-Z_]+$/)
    expect(typeof first?.message, what).toBe('string')
    expect(first, what).toHaveProperty('detail')
  }
  if (answer.status === 416) expect(answer.headers['content-range'], what).toMatch(/^bytes \*\/\d+$/)
}

const UPSTREAM_PATH =
  /^\/v2\/$|^\/v2\/(.+)\/(?:manifests\/(.+)|blobs\/(.+)|tags\/list)$|^\/token$|^\/blobs\/(sha256:[a-f0-9]{64})$/

function checkUpstreamRequest(r: { method: string; path: string; host: string }): void {
  const what = `${r.host} ${r.method} ${r.path}`
  expect(['GET', 'HEAD'], what).toContain(r.method)
  const m = UPSTREAM_PATH.exec(r.path)
  expect(m, what).not.toBeNull()
  const [, repo, ref, blob] = m!
  if (repo !== undefined) {
    expect(repo.length, what).toBeLessThanOrEqual(255)
    expect(NAME_RE.test(repo), what).toBe(true)
  }
  if (blob !== undefined) expect(blob, what).toMatch(/^sha256:[a-f0-9]{64}$/)
  if (ref !== undefined) expect(/^sha256:[a-f0-9]{64}$/.test(ref) || TAG_RE.test(ref), what).toBe(true)
}

// ---- the property ----------------------------------------------------------------------------

test(
  `fuzzed requests: no crash, no 5xx, OCI errors, only well-formed requests upstream (${REQUESTS} requests)`,
  async () => {
    mirror = await fake.mirror({ env: { PULLCACHE_HEADER_TIMEOUT: '1s', PULLCACHE_KEEPALIVE_TIMEOUT: '1s' } })
    let requests = 0
    let checkedUpstream = 0
    const statuses = new Map<number, number>()
    const slow: string[] = []
    await fc.assert(
      fc.asyncProperty(connection, async ([wellFormedRequests, bad]) => {
        const sent = bad === null ? wellFormedRequests : [...wellFormedRequests, bad]
        const t0 = Date.now()
        requests += sent.length
        const data = await exchange(mirror.url, sent)
        const answers = parseAnswers(
          data,
          sent.map((s) => s.method === 'HEAD'),
        )
        // Answers come in order, one per request, until one the server refuses to go on after
        // (a head too large, a malformed request): that one says Connection: close and is last.
        expect(answers.length).toBeGreaterThanOrEqual(1)
        // A malformed request may be answered, and then its malformed body too.
        expect(answers.length).toBeLessThanOrEqual(sent.length + (bad === null ? 0 : 1))
        if (answers.length < sent.length) {
          const last = answers.at(-1)!
          expect(last.status, JSON.stringify(sent.map((x) => x.wire.slice(0, 100)))).toBeGreaterThanOrEqual(
            400,
          )
          expect(last.headers.connection).toBe('close')
        }
        answers.forEach((a, i) => {
          checkAnswer(sent[Math.min(i, sent.length - 1)]!, a)
          statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1)
        })
        if (Date.now() - t0 > 900)
          slow.push(`${Date.now() - t0} ms: ${JSON.stringify(sent.map((x) => x.wire.slice(0, 120)))}`)
        for (const r of fake.up.requests.slice(checkedUpstream)) checkUpstreamRequest(r)
        checkedUpstream = fake.up.requests.length
      }),
      { numRuns: RUNS, ...(SEED === undefined ? {} : { seed: SEED }) },
    )
    expect(mirror.logs.filter((l) => l.event === 'request.failed')).toEqual([])
    const alive = await mirror.get('/v2/')
    expect(alive.status).toBe(200)
    const summary = {
      requests,
      upstream_requests: fake.up.requests.length,
      statuses: Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])),
    }
    console.log(`fuzz: ${JSON.stringify(summary)}`)
    if (slow.length > 0)
      console.log(`connections over 900 ms (${slow.length}):\n${slow.slice(0, 20).join('\n')}`)
  },
  Math.max(60_000, REQUESTS * 20),
)
