import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { afterEach, describe, expect, test } from 'vitest'
import { networkFailure } from '../../src/errors.js'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { type CliProcess, startCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

const REPO = 'library/budget'
const ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json'
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('rate limits, freshness and offline', () => {
  const fake = useFakeUpstream()
  let mirror: TestMirror

  const registryRequests = () => fake.up.requests.filter((r) => r.host === 'registry' && r.authorization)

  test('with few Docker Hub pulls left, cached tags are served without revalidation, and that is logged once', async () => {
    fake.up.setRateLimit({ limit: 100, remaining: 5, window: 3600 })
    mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    fake.up.addImage(REPO, 'low')
    expect((await mirror.get(`/v2/${REPO}/manifests/low`, { accept: ACCEPT })).status).toBe(200)
    await sleep(80)
    fake.up.reset()
    for (let i = 0; i < 3; i++) {
      const res = await mirror.get(`/v2/${REPO}/manifests/low`, { accept: ACCEPT })
      expect(res.headers['x-pullcache-cache']).toBe('hit')
    }
    expect(registryRequests()).toHaveLength(0)
    expect(mirror.logs.filter((l) => l.event === 'upstream.rate_limit_low')).toHaveLength(1)
    const metrics = (await mirror.get('/metrics')).body.toString()
    expect(metrics).toMatch(/^pullcache_upstream_ratelimit_remaining\{upstream="docker.io"\} 4$/m)
    expect(metrics).toMatch(/^pullcache_upstream_ratelimit_limit\{upstream="docker.io"\} 100$/m)
  })

  test('with pulls to spare, tags are revalidated with HEAD only', async () => {
    fake.up.setRateLimit({ limit: 100, remaining: 80, window: 3600 })
    mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    fake.up.addImage(REPO, 'plenty')
    await mirror.get(`/v2/${REPO}/manifests/plenty`, { accept: ACCEPT })
    await sleep(80)
    fake.up.reset()
    await mirror.get(`/v2/${REPO}/manifests/plenty`, { accept: ACCEPT })
    expect(registryRequests().map((r) => r.method)).toEqual(['HEAD'])
  })

  test('x-ratelimit-* headers are read too', async () => {
    mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'xheaders')
    fake.up.fault(
      { method: 'HEAD', path: `/v2/${REPO}/manifests/xheaders` },
      {
        kind: 'status',
        status: 200,
        headers: {
          'docker-content-digest': image.manifestDigest,
          'content-type': image.mediaType,
          'content-length': String(image.manifest.length),
          'x-ratelimit-limit': '40;w=3600',
          'x-ratelimit-remaining': '39;w=3600',
        },
      },
    )
    expect((await mirror.get(`/v2/${REPO}/manifests/xheaders`, { accept: ACCEPT })).status).toBe(200)
    const metrics = (await mirror.get('/metrics')).body.toString()
    expect(metrics).toMatch(/^pullcache_upstream_ratelimit_limit\{upstream="docker.io"\} 40$/m)
    expect(metrics).toMatch(/^pullcache_upstream_ratelimit_remaining\{upstream="docker.io"\} 39$/m)
  })

  test('freshness per pattern: latest stays fresh for its own window, other tags use the default', async () => {
    mirror = await fake.mirror({
      config: {
        cache: { tag_freshness: '50ms', tag_freshness_rules: [{ match: 'latest', freshness: '1h' }] },
      },
    })
    fake.up.addImage(REPO, 'latest')
    fake.up.addImage(REPO, '1.0')
    await mirror.get(`/v2/${REPO}/manifests/latest`, { accept: ACCEPT })
    await mirror.get(`/v2/${REPO}/manifests/1.0`, { accept: ACCEPT })
    await sleep(80)
    fake.up.reset()
    await mirror.get(`/v2/${REPO}/manifests/latest`, { accept: ACCEPT })
    expect(registryRequests()).toHaveLength(0)
    await mirror.get(`/v2/${REPO}/manifests/1.0`, { accept: ACCEPT })
    expect(registryRequests().map((r) => `${r.method} ${r.path}`)).toEqual([`HEAD /v2/${REPO}/manifests/1.0`])
  })

  test('offline mode never contacts upstream: cached content is served, the rest fails at once', async () => {
    mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    const image = fake.up.addImage(REPO, 'kept')
    fake.up.addImage(REPO, 'never')
    await mirror.get(`/v2/${REPO}/manifests/kept`, { accept: ACCEPT })
    for (const l of image.layers) await mirror.get(`/v2/${REPO}/blobs/${l.digest}`)
    await sleep(80)

    const { reload } = mirror.server
    const { loadConfig } = await import('../../src/config.js')
    const base = {
      PULLCACHE_LISTEN: '127.0.0.1:0',
      PULLCACHE_DATA_DIR: mirror.dataDir,
      PULLCACHE_UPSTREAM: fake.up.url,
    }
    expect(
      reload(loadConfig({ env: { ...base, PULLCACHE_TAG_FRESHNESS: '50ms', PULLCACHE_OFFLINE: 'true' } }))
        .changed,
    ).toEqual(['offline'])
    fake.up.reset()

    const tag = await mirror.get(`/v2/${REPO}/manifests/kept`, { accept: ACCEPT })
    expect(tag.status).toBe(200)
    expect(tag.headers['x-pullcache-cache']).toBe('stale')
    const head = await mirror.head(`/v2/${REPO}/manifests/kept`, { accept: ACCEPT })
    expect(head.headers['x-pullcache-cache']).toBe('stale')
    for (const l of image.layers) {
      expect(sha256((await mirror.get(`/v2/${REPO}/blobs/${l.digest}`)).body)).toBe(l.digest)
    }
    const started = Date.now()
    const cold = await mirror.get(`/v2/${REPO}/manifests/never`, { accept: ACCEPT })
    expect(cold.status).toBe(503)
    expect(JSON.parse(cold.body.toString()).errors[0]).toMatchObject({
      code: 'UNAVAILABLE',
      message: 'pullcache is offline',
    })
    const coldBlob = await mirror.get(`/v2/${REPO}/blobs/${sha256(Buffer.from('x'))}`)
    expect(coldBlob.status).toBe(503)
    expect(Date.now() - started).toBeLessThan(1000)
    expect(fake.up.requests).toHaveLength(0)

    // And back online without a restart.
    reload(loadConfig({ env: { ...base, PULLCACHE_TAG_FRESHNESS: '50ms' } }))
    expect((await mirror.get(`/v2/${REPO}/manifests/never`, { accept: ACCEPT })).status).toBe(200)
  })

  test('HEAD and tags/list are served stale too, and stale answers are counted', async () => {
    mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    fake.up.addImage(REPO, 'counted')
    await mirror.get(`/v2/${REPO}/manifests/counted`, { accept: ACCEPT })
    await mirror.get(`/v2/${REPO}/tags/list`)
    await sleep(80)
    fake.up.fault({ path: /./ }, { kind: 'status', status: 503 })
    const head = await mirror.head(`/v2/${REPO}/manifests/counted`, { accept: ACCEPT })
    expect(head.status).toBe(200)
    expect(head.headers['x-pullcache-cache']).toBe('stale')
    const list = await mirror.get(`/v2/${REPO}/tags/list`)
    expect(list.status).toBe(200)
    expect(list.headers['x-pullcache-cache']).toBe('stale')
    const metrics = (await mirror.get('/metrics')).body.toString()
    expect(metrics).toMatch(
      /pullcache_requests_total\{upstream="docker.io",kind="manifest",method="HEAD",result="stale"\} 1/,
    )
    expect(metrics).toMatch(
      /pullcache_requests_total\{upstream="docker.io",kind="tags",method="GET",result="stale"\} 1/,
    )
  })

  test('DNS failures and timeouts are network failures (stale-if-error applies to them)', () => {
    expect(networkFailure(Object.assign(new Error('getaddrinfo'), { code: 'ENOTFOUND' })).kind).toBe(
      'NETWORK',
    )
    expect(networkFailure(Object.assign(new Error('x'), { code: 'EAI_AGAIN' })).kind).toBe('NETWORK')
    expect(networkFailure(Object.assign(new Error('x'), { code: 'UND_ERR_HEADERS_TIMEOUT' })).kind).toBe(
      'TIMEOUT',
    )
    expect(networkFailure(Object.assign(new Error('x'), { code: 'UND_ERR_CONNECT_TIMEOUT' })).kind).toBe(
      'TIMEOUT',
    )
  })
})

describe('SIGHUP', () => {
  const fake = useFakeUpstream()
  let child: CliProcess | undefined
  afterEach(async () => {
    await child?.kill()
  })

  test('reloads the config file and applies the offline switch without a restart; SIGTERM drains fast', async () => {
    const up = fake.up
    const dir = await tmpRoot()
    const file = join(dir, 'pullcache.json')
    const write = (offline: boolean) =>
      writeFile(
        file,
        JSON.stringify({
          listen: '127.0.0.1:0',
          data_dir: join(dir, 'data'),
          offline,
          upstream: { url: up.url },
        }),
      )
    await write(false)
    const serve = startCli(['serve', '--config', file])
    child = serve
    const logged = (event: string) =>
      waitFor(() => serve.lines.find((l) => l.event === event), {
        // Starting node and opening the store takes seconds on a loaded two-core machine.
        timeoutMs: 15_000,
        what: `the "${event}" log line`,
      })
    const url = (await logged('listening')).url as string
    up.addImage(REPO, 'hup')
    await write(true)
    serve.signal('SIGHUP')
    expect(await logged('config.reloaded')).toMatchObject({ changed: ['offline'] })
    up.reset()
    const res = await request(`${url}/v2/${REPO}/manifests/hup`, { headers: { accept: ACCEPT } })
    expect(res.statusCode).toBe(503)
    await res.body.dump()
    expect(up.requests).toHaveLength(0)
    // The request above left a keep-alive connection open, as dockerd and containerd do: the
    // drain closes it once idle instead of waiting out the whole grace period.
    const stopping = Date.now()
    serve.signal('SIGTERM')
    const code = await serve.exited
    expect(code).toBe(0)
    expect(Date.now() - stopping).toBeLessThan(3_000)
  })

  test('a SIGHUP while the server is still starting is applied once it runs, not fatal', async () => {
    const dir = await tmpRoot()
    const file = join(dir, 'pullcache.json')
    const config = { listen: '127.0.0.1:0', data_dir: join(dir, 'data'), upstream: { url: fake.up.url } }
    await writeFile(file, JSON.stringify(config))
    const serve = startCli(['serve', '--config', file])
    child = serve
    const logged = (event: string) =>
      waitFor(() => serve.lines.find((l) => l.event === event), { timeoutMs: 15_000, what: `"${event}"` })
    // The store is open, the server not yet listening: Node's default for SIGHUP would end it.
    await logged('store.opened')
    await writeFile(file, JSON.stringify({ ...config, offline: true }))
    serve.signal('SIGHUP')
    await logged('listening')
    expect(await logged('config.reloaded')).toMatchObject({ changed: ['offline'] })
    serve.signal('SIGTERM')
    expect(await serve.exited).toBe(0)
  })
})
