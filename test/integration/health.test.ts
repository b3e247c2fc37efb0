import { readFileSync } from 'node:fs'
import { readdir, rename, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { beforeAll, describe, expect, test } from 'vitest'
import type { Readiness } from '../../src/http/health.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'

const VERSION = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version

/** An address where nothing listens: connections to it are refused. */
async function deadUrl(): Promise<string> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as { port: number }
  await new Promise<void>((r) => server.close(() => r()))
  return `http://127.0.0.1:${port}`
}

async function readyz(mirror: TestMirror): Promise<{ status: number; body: Readiness }> {
  const res = await mirror.get('/_pullcache/readyz')
  expect(res.headers['content-type']).toMatch(/^application\/json/)
  expect(res.headers['cache-control']).toBe('no-store')
  return { status: res.status, body: JSON.parse(res.body.toString()) as Readiness }
}

describe('health and readiness', () => {
  const fake = useFakeUpstream()
  let mirror: TestMirror

  beforeAll(async () => {
    mirror = await fake.fileMirror()
  })

  test('healthz answers 200 with the version and the uptime', async () => {
    const res = await mirror.get('/_pullcache/healthz')
    expect(res.status).toBe(200)
    const body = JSON.parse(res.body.toString()) as Record<string, unknown>
    expect(body).toEqual({ status: 'ok', version: VERSION, uptime_seconds: expect.any(Number) })
    expect(body.uptime_seconds).toBeGreaterThanOrEqual(0)
  })

  test('readyz is 200 with every check ok, and asks upstream once per 10 s however often it is probed', async () => {
    fake.up.reset()
    const first = await readyz(mirror)
    expect(first.status).toBe(200)
    expect(first.body.ready).toBe(true)
    expect(first.body.checks.store).toEqual({ ok: true, detail: expect.stringContaining('writable') })
    expect(first.body.checks.index).toEqual({
      ok: true,
      detail: expect.stringMatching(/^open, schema version \d+$/),
    })
    // The fake demands a token, as Hub does: 401 on /v2/ means upstream answers.
    expect(first.body.checks.upstream).toEqual({ ok: true, detail: `${fake.up.url}/v2/ answered 401` })

    const more = await Promise.all(Array.from({ length: 5 }, () => readyz(mirror)))
    for (const r of more) expect(r.body).toEqual(first.body)
    expect(fake.up.count('GET', '/v2/')).toBe(1)
    // Only /v2/: no token fetched, nothing else asked.
    expect(fake.up.requests).toHaveLength(1)

    const metrics = (await mirror.get('/metrics')).body.toString()
    expect(metrics).toMatch(
      /pullcache_upstream_requests_total\{upstream="docker.io",kind="ping",method="GET",status="401"\} 1\n/,
    )
    // No probe file is left behind in tmp/.
    expect(await readdir(join(mirror.dataDir, 'tmp'))).toEqual([])
  })

  test('readyz is 503 while the store cannot be written, and ready again once it can', async () => {
    // Tests run as root, where a read-only mode does not stop writes: a file where the
    // directory should be does.
    const tmp = join(mirror.dataDir, 'tmp')
    await rename(tmp, `${tmp}.away`)
    try {
      await writeFile(tmp, 'not a directory')
      const { status, body } = await readyz(mirror)
      expect(status).toBe(503)
      expect(body.ready).toBe(false)
      expect(body.checks.store.ok).toBe(false)
      expect(body.checks.store.detail).toMatch(/not writable: ENOTDIR/)
      expect(body.checks.index.ok).toBe(true)
      expect(body.checks.upstream.ok).toBe(true)
    } finally {
      await rm(tmp, { force: true })
      await rename(`${tmp}.away`, tmp)
    }
    expect((await readyz(mirror)).status).toBe(200)
  })

  test('the status page is HTML at /, /_pullcache and /_pullcache/; /v2/ is untouched', async () => {
    for (const path of ['/', '/_pullcache', '/_pullcache/']) {
      const res = await mirror.get(path)
      expect(res.status, path).toBe(200)
      expect(res.headers['content-type']).toBe('text/html; charset=utf-8')
      expect(res.headers['cache-control']).toBe('no-store')
      expect(res.headers['content-security-policy']).toMatch(/^default-src 'none'/)
      expect(res.body.toString()).toMatch(/^<!doctype html>/)
    }
    const v2 = await mirror.get('/v2/')
    expect(v2.status).toBe(200)
    expect(v2.headers['content-type']).toMatch(/^application\/json/)
    expect(v2.body.toString()).toBe('{}')
    const unknown = await mirror.get('/v2/library/x/nothing')
    expect(unknown.status).toBe(404)
    expect(unknown.headers['content-type']).toBe('application/json')
    expect((await mirror.get('/index.html')).status).toBe(404)
  })

  test('healthz and readyz answer HEAD too', async () => {
    expect((await mirror.head('/_pullcache/healthz')).status).toBe(200)
    expect((await mirror.head('/_pullcache/readyz')).status).toBe(200)
  })
})

describe('readiness with upstream down', () => {
  const fake = useFakeUpstream()

  test('503 when upstream refuses connections; 200 with "offline on purpose" when offline', async () => {
    const mirror = await fake.mirror({ upstream: await deadUrl() })
    const down = await readyz(mirror)
    expect(down.status).toBe(503)
    expect(down.body.ready).toBe(false)
    expect(down.body.checks.upstream.ok).toBe(false)
    expect(down.body.checks.upstream.detail).toMatch(/\/v2\/: upstream unreachable: ECONNREFUSED/)
    expect(down.body.checks.store.ok).toBe(true)
    expect(down.body.checks.index.ok).toBe(true)
    // The failure shows where the status page lists upstream errors.
    const stats = JSON.parse((await mirror.get('/_pullcache/stats')).body.toString()) as {
      upstream: { recent_errors: { kind: string }[] }
    }
    expect(stats.upstream.recent_errors[0]?.kind).toBe('NETWORK')

    mirror.server.mirror.offline = true
    const offline = await readyz(mirror)
    expect(offline.status).toBe(200)
    expect(offline.body.checks.upstream).toEqual({ ok: true, detail: 'offline on purpose' })
    // healthz does not care either way.
    expect((await mirror.get('/_pullcache/healthz')).status).toBe(200)
  })

  test('503 when upstream answers /v2/ with neither 200 nor 401', async () => {
    const up = fake.up
    up.fault({ path: '/v2/' }, { kind: 'status', status: 503 })
    const mirror = await fake.mirror()
    const { status, body } = await readyz(mirror)
    expect(status).toBe(503)
    expect(body.checks.upstream).toEqual({
      ok: false,
      detail: `${up.url}/v2/ answered 503, expected 200 or 401`,
    })
  })

  test('a mirror started offline is ready without asking upstream', async () => {
    const up = fake.up
    const mirror = await fake.mirror({ config: { offline: true } })
    const { status, body } = await readyz(mirror)
    expect(status).toBe(200)
    expect(body.checks.upstream.detail).toBe('offline on purpose')
    expect(up.requests).toHaveLength(0)
  })
})
