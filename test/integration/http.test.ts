import { connect } from 'node:net'
import { request } from 'undici'
import { beforeAll, describe, expect, test } from 'vitest'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'
import { waitFor } from '../support/wait-for.js'

/** Sends bytes as they are and collects everything until the server closes the connection. */
function rawExchange(url: string, data: string): Promise<string> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => socket.write(data))
    let out = ''
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`no close within 5 s; got ${JSON.stringify(out.slice(0, 200))}`))
    }, 5_000)
    socket.on('data', (d) => {
      out += d.toString('latin1')
    })
    socket.on('error', () => {})
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(out)
    })
  })
}

/** Status, headers and the OCI error code of one raw HTTP/1.1 answer. */
function ociAnswer(raw: string): { status: number; headers: string; code: string } {
  const end = raw.indexOf('\r\n\r\n')
  const headers = raw.slice(0, end)
  expect(headers).toMatch(/\r\nContent-Type: application\/json/i)
  const body = JSON.parse(raw.slice(end + 4)) as { errors: { code: string; message: string }[] }
  expect(body.errors[0]!.message).toBeTypeOf('string')
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1]), headers, code: body.errors[0]!.code }
}

/** Sends a request line as it is, without a client normalising the path on the way. */
function rawGet(url: string, path: string): Promise<{ status: number; body: string }> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: close\r\n\r\n`)
    })
    let data = ''
    socket.on('data', (d) => {
      data += d.toString('latin1')
    })
    socket.on('end', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1])
      resolve({ status, body: data.slice(data.indexOf('\r\n\r\n') + 4) })
    })
    socket.on('error', reject)
  })
}

describe('the HTTP surface', () => {
  const fake = useFakeUpstream()
  let mirror: TestMirror

  beforeAll(async () => {
    mirror = await fake.fileMirror()
  })

  test('GET and HEAD /v2/ answer 200 with the API version header, without asking upstream', async () => {
    fake.up.reset()
    for (const call of [mirror.get('/v2/'), mirror.head('/v2/'), mirror.get('/v2')]) {
      const res = await call
      expect(res.status).toBe(200)
      expect(res.headers['docker-distribution-api-version']).toBe('registry/2.0')
    }
    expect(fake.up.requests).toHaveLength(0)
  })

  test('every error is OCI JSON with the right status and the API version header', async () => {
    const digest = `sha256:${'a'.repeat(64)}`
    const cases: [string, number, string][] = [
      ['/v2/UPPER/manifests/latest', 400, 'NAME_INVALID'],
      ['/v2/a//b/manifests/latest', 400, 'NAME_INVALID'],
      ['/v2/library/x/manifests/bad:tag:here', 400, 'DIGEST_INVALID'],
      [`/v2/library/x/manifests/${'t'.repeat(129)}`, 400, 'TAG_INVALID'],
      ['/v2/library/x/blobs/sha256:1234', 400, 'DIGEST_INVALID'],
      ['/v2/library/x/blobs/latest', 400, 'DIGEST_INVALID'],
      [`/v2/library/x/blobs/sha512:${'b'.repeat(128)}`, 404, 'BLOB_UNKNOWN'],
      [`/v2/library/x/blobs/${digest}`, 404, 'BLOB_UNKNOWN'],
      ['/v2/library/x/nonsense', 404, 'NOT_FOUND'],
      ['/v2/_catalog?n=many', 400, 'PAGINATION_NUMBER_INVALID'],
      ['/v2/library/x/referrers/sha256:1234', 400, 'DIGEST_INVALID'],
      [`/v2/UPPER/referrers/${digest}`, 400, 'NAME_INVALID'],
      ['/elsewhere', 404, 'NOT_FOUND'],
      [`/v2/library/x/blobs/uploads/`, 404, 'NOT_FOUND'],
    ]
    for (const [path, status, code] of cases) {
      const res = await mirror.get(path)
      expect(res.status, path).toBe(status)
      expect(res.headers['content-type'], path).toBe('application/json')
      expect(res.headers['docker-distribution-api-version']).toBe('registry/2.0')
      const body = JSON.parse(res.body.toString())
      expect(body.errors[0].code, path).toBe(code)
      expect(typeof body.errors[0].message).toBe('string')
    }
  })

  test('push and delete are 405 UNSUPPORTED and never reach upstream', async () => {
    fake.up.reset()
    const { request } = await import('undici')
    for (const [method, path] of [
      ['PUT', '/v2/library/x/manifests/latest'],
      ['DELETE', '/v2/library/x/manifests/latest'],
      ['POST', '/v2/library/x/blobs/uploads/'],
      ['PATCH', '/v2/library/x/blobs/uploads/abc'],
      ['DELETE', `/v2/library/x/blobs/sha256:${'c'.repeat(64)}`],
    ] as const) {
      const res = await request(`${mirror.url}${path}`, { method, body: method === 'DELETE' ? null : 'x' })
      expect(res.statusCode, `${method} ${path}`).toBe(405)
      const body = (await res.body.json()) as { errors: { code: string }[] }
      expect(body.errors[0]!.code).toBe('UNSUPPORTED')
    }
    expect(fake.up.requests).toHaveLength(0)
  })

  test('no path, however encoded, escapes the name grammar or reaches upstream', async () => {
    fake.up.reset()
    const paths = [
      '/v2/../../etc/passwd/manifests/latest',
      '/v2/library/%2e%2e/%2e%2e/manifests/latest',
      '/v2/library%2Fx/manifests/latest',
      '/v2/library/x%00/manifests/latest',
      `/v2/library/x/blobs/sha256:${'a'.repeat(63)}%2F`,
      `/v2/library/x/blobs/sha256%3A${'a'.repeat(64)}`,
      `/v2/library/x/blobs/..%2F..%2F${'a'.repeat(64)}`,
    ]
    for (const path of paths) {
      const res = await rawGet(mirror.url, path)
      expect(res.status, path).toBeGreaterThanOrEqual(400)
      expect(res.status, path).toBeLessThan(500)
      expect(JSON.parse(res.body).errors[0].code, path).toBeTypeOf('string')
    }
    expect(fake.up.requests).toHaveLength(0)
  })

  test('a malformed Range is 416 with Content-Range', async () => {
    const bytes = Buffer.from('range me please')
    const digest = fake.up.addBlob('library/x', bytes)
    await mirror.get(`/v2/library/x/blobs/${digest}`)
    for (const range of ['bytes=10-5', 'bytes=-0', 'bytes=100-', 'bytes=-']) {
      const res = await mirror.get(`/v2/library/x/blobs/${digest}`, { range })
      expect(res.status, range).toBe(416)
      expect(res.headers['content-range']).toBe(`bytes */${bytes.length}`)
    }
  })

  test('one JSON access line per request with method, path, status, bytes, duration and cache result', async () => {
    const before = mirror.logs.length
    const digest = fake.up.addBlob('library/x', Buffer.from('logged'))
    await mirror.get(`/v2/library/x/blobs/${digest}`)
    await new Promise((r) => setTimeout(r, 20))
    const lines = mirror.logs.slice(before).filter((l) => l.event === 'request')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatchObject({
      method: 'GET',
      path: `/v2/library/x/blobs/${digest}`,
      status: 200,
      bytes: 6,
      cache: 'miss',
    })
    expect(lines[0]!.duration_ms).toBeTypeOf('number')
  })

  test('an unsatisfiable range is booked once, as an error, in the access line and the stats alike', async () => {
    const m = await fake.mirror()
    const bytes = Buffer.from('booked once')
    const digest = fake.up.addBlob('library/x', bytes)
    expect((await m.get(`/v2/library/x/blobs/${digest}`)).status).toBe(200)
    expect((await m.get(`/v2/library/x/blobs/${digest}`, { range: 'bytes=100-' })).status).toBe(416)
    const lines = await waitFor(
      () => {
        const found = m.logs.filter((l) => l.event === 'request')
        return found.length === 2 && found
      },
      { what: 'two access lines' },
    )
    expect(lines.map((l) => [l.status, l.cache])).toEqual([
      [200, 'miss'],
      [416, 'hit'],
    ])
    const metrics = (await m.get('/metrics')).body.toString()
    const booked = [
      ...metrics.matchAll(
        /^pullcache_requests_total\{upstream="docker.io",kind="blob",method="GET",result="(\w+)"\} (\d+)$/gm,
      ),
    ]
    expect(booked.map((b) => [b[1], Number(b[2])]).sort()).toEqual([
      ['error', 1],
      ['miss', 1],
    ])
    expect(metrics).toMatch(
      new RegExp(
        `^pullcache_served_bytes_total\\{upstream="docker.io",source="upstream"\\} ${bytes.length}$`,
        'm',
      ),
    )
    expect(metrics).not.toMatch(/^pullcache_served_bytes_total\{upstream="docker.io",source="cache"\}/m)
  })

  test('a manifest the client left before it was answered books the bytes sent (none), not its size', async () => {
    const m = await fake.mirror()
    fake.up.addImage('library/gone', 'v1')
    fake.up.fault({ method: 'GET', path: /\/manifests\// }, { kind: 'delay', ms: 1500 }, 1)
    const controller = new AbortController()
    const asked = request(`${m.url}/v2/library/gone/manifests/v1`, { signal: controller.signal })
    // The client leaves once the mirror is waiting on upstream for it: not on a clock, which on a
    // loaded machine could cut the request before the mirror had even read it.
    await waitFor(() => fake.up.count('GET', /\/manifests\//) > 0, { what: 'the upstream manifest GET' })
    controller.abort()
    await expect(asked).rejects.toThrow()
    const [line] = await waitFor(
      () => {
        const found = m.logs.filter((l) => l.event === 'request')
        return found.length > 0 && found
      },
      { what: 'the access line of the abandoned request' },
    )
    expect(line).toMatchObject({ path: '/v2/library/gone/manifests/v1', bytes: 0, complete: false })
    // Booked once, as the request it was (once the route has its answer), with nothing served.
    const manifestBookings = async () => {
      const metrics = (await m.get('/metrics')).body.toString()
      const booked = [
        ...metrics.matchAll(
          /^pullcache_requests_total\{upstream="docker.io",kind="manifest",[^}]*\} (\d+)$/gm,
        ),
      ]
      return { metrics, count: booked.reduce((n, b) => n + Number(b[1]), 0) }
    }
    const { metrics, count } = await waitFor(
      async () => {
        const booked = await manifestBookings()
        return booked.count > 0 && booked
      },
      { what: 'the manifest request in the stats' },
    )
    expect(count).toBe(1)
    expect(metrics).not.toMatch(/^pullcache_served_bytes_total\{/m)
  })

  test('every registry API request is timed by kind, with or without the access log', async () => {
    const quiet = await fake.mirror({ env: { PULLCACHE_ACCESS_LOG: 'false' } })
    const digest = fake.up.addBlob('library/x', Buffer.from('timed'))
    await quiet.get('/v2/')
    await quiet.get(`/v2/library/x/blobs/${digest}`)
    await quiet.get(`/v2/library/x/blobs/${digest}`)
    await quiet.get('/v2/library/x/manifests/nope')
    await quiet.get('/_pullcache/healthz')
    await new Promise((r) => setTimeout(r, 20))
    const metrics = (await quiet.get('/metrics')).body.toString()
    expect(metrics).toMatch(/^pullcache_request_duration_seconds_count\{kind="base"\} 1$/m)
    expect(metrics).toMatch(/^pullcache_request_duration_seconds_count\{kind="blob"\} 2$/m)
    expect(metrics).toMatch(/^pullcache_request_duration_seconds_count\{kind="manifest"\} 1$/m)
    // Only /v2: the status endpoints and /metrics itself are not registry API requests.
    const kinds = [...metrics.matchAll(/^pullcache_request_duration_seconds_count\{kind="(\w+)"\}/gm)]
    expect(kinds.map((m) => m[1]).sort()).toEqual(['base', 'blob', 'manifest'])
    expect(quiet.logs.filter((l) => l.event === 'request')).toHaveLength(0)
  })

  test('?ns= for Docker Hub or the upstream is served; another registry is 404 so containerd moves on', async () => {
    const digest = fake.up.addBlob('library/x', Buffer.from('namespaced'))
    const ok = await mirror.get(`/v2/library/x/blobs/${digest}?ns=docker.io`)
    expect(ok.status).toBe(200)
    expect((await mirror.get(`/v2/library/x/blobs/${digest}?ns=${new URL(fake.up.url).host}`)).status).toBe(
      200,
    )
    fake.up.reset()
    const other = await mirror.get(`/v2/library/x/blobs/${digest}?ns=ghcr.io`)
    expect(other.status).toBe(404)
    expect(JSON.parse(other.body.toString()).errors[0].code).toBe('NAME_UNKNOWN')
    expect(fake.up.requests).toHaveLength(0)
  })

  test('names upstream would know by more than 255 characters are NAME_INVALID and not forwarded', async () => {
    fake.up.reset()
    for (const name of ['a'.repeat(256), 'a'.repeat(250), `a/${'b'.repeat(254)}`]) {
      for (const path of [`/v2/${name}/manifests/latest`, `/v2/${name}/blobs/sha256:${'a'.repeat(64)}`]) {
        const res = await mirror.get(path)
        expect(res.status, name.length.toString()).toBe(400)
        expect(JSON.parse(res.body.toString()).errors[0].code).toBe('NAME_INVALID')
      }
    }
    expect(fake.up.requests).toHaveLength(0)
  })

  test('what the HTTP parser refuses is answered with an OCI error and Connection: close', async () => {
    const cases: [string, number][] = [
      ['FOO / HTTP/1.1\r\nHost: x\r\n\r\n', 405],
      ['\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n', 400],
      ['GET /v2/ HTTP/1.1\r\n\r\n', 400],
      ['GET /v2/ HTTP/1.0\r\n\r\n', 400],
      ['GET /v2/ HTTP/1.1\r\nHost: a b\r\n\r\n', 400],
      ['GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n', 400],
      ['GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n', 400],
      [`GET /v2/ HTTP/1.1\r\nHost: x\r\nX: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
      [`GET /v2/${'a/'.repeat(10_000)}manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n`, 431],
    ]
    fake.up.reset()
    for (const [request, status] of cases) {
      const answer = ociAnswer(await rawExchange(mirror.url, request))
      expect(answer.status, JSON.stringify(request.slice(0, 40))).toBe(status)
      expect(answer.headers).toMatch(/\r\nConnection: close/i)
    }
    expect(fake.up.requests).toHaveLength(0)
  })

  test('a parse error after a pipelined request is answered once the first answer is out', async () => {
    const raw = await rawExchange(
      mirror.url,
      'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nBAD\x01 / HTTP/1.1\r\n\r\n',
    )
    const answers = raw.split(/(?=HTTP\/1\.1 )/)
    expect(answers.map((a) => Number(a.slice(9, 12)))).toEqual([200, 200, 400])
    expect(ociAnswer(answers[2]!).code).toBe('REQUEST_INVALID')
  })
})
