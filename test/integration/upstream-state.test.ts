// The status page says whether upstream can be reached now: online only while the last contact
// with upstream succeeded, "upstream unreachable (serving from cache)" once it fails, and back
// to online when upstream answers again. Failed readiness pings, sent every few seconds by
// load balancers during an outage, are listed once per outage, not once per ping.

import { describe, expect, test } from 'vitest'
import type { StatsReport } from '../../src/mirror/stats-report.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'

// Each test takes its own upstream (fx.upstream()), since some stop theirs halfway; the fixture
// closes what is left, and every mirror, after each test.
const fx = useFakeUpstream()

async function page(mirror: TestMirror): Promise<string> {
  const res = await mirror.get('/')
  expect(res.status).toBe(200)
  return res.body.toString()
}

async function stats(mirror: TestMirror): Promise<StatsReport['upstream']> {
  return (JSON.parse((await mirror.get('/_pullcache/stats')).body.toString()) as StatsReport).upstream
}

/** The badge's state, as the page marks it. */
function badgeState(html: string): string | undefined {
  return /<span class="badge [^"]*"[^>]*data-state="([a-z]+)"/.exec(html)?.[1]
}

/** A ping that does not reuse the last one's answer (pings are shared for 10 s). */
async function freshPing(mirror: TestMirror, step: number): Promise<void> {
  await mirror.server.mirror.upstream.ping(Date.now() + step * 11_000)
}

describe('the status page badge follows upstream', () => {
  test('online while upstream answers; unreachable, still serving the cache, once it is stopped', async () => {
    const up = await fx.upstream()
    const image = up.addImage('library/alpine', '3.20')
    const mirror = await fx.mirror({ upstream: up.url })
    const path = '/v2/library/alpine/manifests/3.20'
    expect((await mirror.get(path)).status).toBe(200)
    const online = await page(mirror)
    expect(badgeState(online)).toBe('online')
    expect(online).toContain('>online</span>')
    expect((await stats(mirror)).state).toBe('online')

    await up.close()
    // Something not cached: the mirror has to ask upstream, which is not there.
    expect((await mirror.get('/v2/library/busybox/manifests/latest')).status).toBe(503)
    const down = await page(mirror)
    expect(badgeState(down)).toBe('unreachable')
    expect(down).toContain('upstream unreachable (serving from cache)')
    expect(down).not.toContain('>online</span>')
    expect(down).toContain('data-testid="unreachable-banner"')
    expect(down).toContain('<title>pullcache (upstream unreachable)</title>')
    const report = await stats(mirror)
    expect(report.state).toBe('unreachable')
    expect(report.last_failure?.message).toMatch(/ECONNREFUSED/)
    // What is cached is still served.
    const cached = await mirror.get(path)
    expect(cached.status).toBe(200)
    expect(cached.headers['docker-content-digest']).toBe(image.manifestDigest)
  })

  test('a mirror whose upstream never answered is not shown online', async () => {
    const up = await fx.upstream()
    await up.close()
    const mirror = await fx.mirror({ upstream: up.url })
    // Loading the page pings upstream (the readiness check) before it draws the badge.
    const html = await page(mirror)
    expect(badgeState(html)).toBe('unreachable')
    expect(html).toContain('no answer from upstream yet')
  })

  test('offline on purpose: "offline mode", and upstream is not asked', async () => {
    const mirror = await fx.mirror({ config: { offline: true } })
    const html = await page(mirror)
    expect(badgeState(html)).toBe('offline')
    expect(html).toContain('offline mode')
    expect(fx.up.requests).toHaveLength(0)
  })
})

describe('failed readiness pings in the upstream error list', () => {
  test('one entry per outage, however many pings fail; a new outage gets a new one', async () => {
    const up = fx.up
    const mirror = await fx.mirror()
    const pingErrors = async () =>
      (await stats(mirror)).recent_errors.filter((e) => e.message.startsWith('ping '))
    up.fault({ path: '/v2/' }, { kind: 'reset' })
    expect((await mirror.get('/_pullcache/readyz')).status).toBe(503)
    for (let step = 1; step <= 6; step++) await freshPing(mirror, step)
    expect(up.count('GET', '/v2/')).toBe(7)
    expect(await pingErrors()).toHaveLength(1)
    expect((await stats(mirror)).state).toBe('unreachable')

    // Upstream is back: the next ping succeeds and the badge says online again.
    up.clearFaults()
    await freshPing(mirror, 7)
    expect(badgeState(await page(mirror))).toBe('online')

    // A second outage is listed once more.
    up.fault({ path: '/v2/' }, { kind: 'reset' })
    for (let step = 8; step <= 10; step++) await freshPing(mirror, step)
    expect(await pingErrors()).toHaveLength(2)
    expect((await stats(mirror)).state).toBe('unreachable')
  })
})
