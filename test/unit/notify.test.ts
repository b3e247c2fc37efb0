// Webhook pieces on their own: the backoff, the filter, the queue's bound, the eviction events and
// the config's checks. Delivery end to end is test/integration/notify.test.ts.

import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, test } from 'vitest'
import { type ConfigError, loadConfig } from '../../src/config.js'
import { silentLogger } from '../../src/log.js'
import { backoffDelay, Endpoint, type EndpointConfig } from '../../src/notify/endpoint.js'
import { evictEvents, makeEvent, type NotifyEvent, wanted } from '../../src/notify/events.js'

const SOURCE = { addr: 'test:5000', instanceID: 'i' }

function pull(mediaType = 'application/vnd.oci.image.manifest.v1+json'): NotifyEvent {
  return makeEvent({ action: 'pull', target: { mediaType, digest: 'sha256:aa', repository: 'r' } }, SOURCE)
}

describe('backoff', () => {
  test('starts at half to all of the backoff and doubles with each failure, capped at a minute', () => {
    expect(backoffDelay(1000, 1, () => 0)).toBe(500)
    expect(backoffDelay(1000, 1, () => 1)).toBe(1000)
    expect(backoffDelay(1000, 3, () => 1)).toBe(4000)
    expect(backoffDelay(1000, 3, () => 0)).toBe(2000)
    expect(backoffDelay(1000, 30, () => 1)).toBe(60_000)
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(200, 2)
      expect(d).toBeGreaterThanOrEqual(200)
      expect(d).toBeLessThanOrEqual(400)
    }
  })
})

describe('filter', () => {
  const all = { events: ['pull', 'fill', 'evict'] as const, ignore: { media_types: [], actions: [] } }
  test('events lists the actions an endpoint gets', () => {
    expect(wanted(all, pull())).toBe(true)
    expect(wanted({ ...all, events: ['fill'] }, pull())).toBe(false)
  })
  test('ignore drops actions and media types', () => {
    expect(wanted({ ...all, ignore: { media_types: [], actions: ['pull'] } }, pull())).toBe(false)
    const ignoreBlobs = { ...all, ignore: { media_types: ['application/octet-stream'], actions: [] } }
    expect(wanted(ignoreBlobs, pull('application/octet-stream'))).toBe(false)
    expect(wanted(ignoreBlobs, pull())).toBe(true)
  })
})

describe('eviction events', () => {
  test('one per reason, with digests, count and bytes', () => {
    const events = evictEvents([
      { digest: 'sha256:a', size: 10, allocated: 4096, reason: 'size' },
      { digest: 'sha256:b', size: 20, allocated: 4096, reason: 'size' },
      { digest: 'sha256:c', size: 5, allocated: 4096, reason: 'age' },
    ])
    expect(events).toEqual([
      {
        action: 'evict',
        target: { digests: ['sha256:a', 'sha256:b'], count: 2, size: 30, bytes: 8192, reason: 'size' },
      },
      { action: 'evict', target: { digests: ['sha256:c'], count: 1, size: 5, bytes: 4096, reason: 'age' } },
    ])
  })
})

describe('the queue', () => {
  let server: Server | undefined
  afterEach(async () => {
    server?.closeAllConnections()
    await new Promise((r) => server?.close(r) ?? r(undefined))
    server = undefined
  })

  test('holds at most `queue` events: the oldest go, counted as dropped, and adding never waits', async () => {
    // A receiver that never answers: nothing leaves the queue but by the bound.
    server = createServer(() => {})
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r))
    const { port } = server.address() as AddressInfo
    const counts = { sent: 0, failed: 0, dropped: 0 }
    const config: EndpointConfig = {
      name: 'slow',
      url: `http://127.0.0.1:${port}/`,
      headers: {},
      timeout: 60_000,
      backoff: 1000,
      max_attempts: 5,
      queue: 3,
      events: ['pull', 'fill', 'evict'],
      ignore: { media_types: [], actions: [] },
    }
    const endpoint = new Endpoint(config, silentLogger, {
      sent: (_e, n) => {
        counts.sent += n
      },
      failed: (_e, n) => {
        counts.failed += n
      },
      dropped: (_e, n) => {
        counts.dropped += n
      },
    })
    const started = performance.now()
    for (let i = 0; i < 10; i++) endpoint.add(pull())
    expect(performance.now() - started).toBeLessThan(50)
    expect(endpoint.pending).toBe(3)
    expect(counts.dropped).toBe(7)
    // Shutdown does not wait on the receiver past its deadline; what was unsent is counted failed.
    const closing = performance.now()
    await endpoint.close(100)
    expect(performance.now() - closing).toBeLessThan(2000)
    expect(counts).toEqual({ sent: 0, failed: 3, dropped: 7 })
  })
})

describe('config', () => {
  const load = (env: Record<string, string>) => loadConfig({ env })
  test('PULLCACHE_NOTIFY_URL gives one endpoint, named env, with every event', () => {
    const config = load({ PULLCACHE_NOTIFY_URL: 'http://127.0.0.1:9/hook' })
    expect(config.notifications.endpoints).toMatchObject([
      { name: 'env', url: 'http://127.0.0.1:9/hook', events: ['pull', 'fill', 'evict'], headers: {} },
    ])
  })
  test('a URL with credentials, another scheme or a bad header is refused with the reason', () => {
    const problems = (url: string) => {
      try {
        load({ PULLCACHE_NOTIFY_URL: url })
      } catch (err) {
        return (err as ConfigError).problems.join('\n')
      }
      return ''
    }
    expect(problems('https://me:pw@hooks.example/x')).toMatch(/credentials in the endpoint's headers/)
    expect(problems('ftp://hooks.example/x')).toMatch(/must be http or https/)
    expect(problems('not a url')).toMatch(/not a URL/)
  })
})
