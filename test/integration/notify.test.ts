// Webhooks end to end: pulls through a mirror of the fake upstream reach a real HTTP receiver on
// 127.0.0.1:0 as distribution-style envelopes; a receiver that fails and recovers gets them after
// a retry; one that hangs slows no pull, and its overflow is counted; filters hold; a reload
// (what SIGHUP does) moves events to the new endpoints.

import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, test } from 'vitest'
import { loadConfig } from '../../src/config.js'
import type { NotifyEvent } from '../../src/notify/events.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { waitFor } from '../support/wait-for.js'

const TOKEN = 'Bearer hook-token-7f3a9c'
const REPO = 'library/notified'

interface Received {
  headers: IncomingMessage['headers']
  events: NotifyEvent[]
}

interface Receiver {
  url: string
  received: Received[]
  /** Every event received, in order. */
  events(): NotifyEvent[]
  /** How the next requests are answered: a status, or 'hang' (never). */
  answer: number | 'hang'
  /** Answer this many more requests with 503 before `answer`. */
  failNext: number
  requests: number
  close(): Promise<void>
}

const receivers: Receiver[] = []
afterEach(async () => {
  for (const r of receivers.splice(0)) await r.close()
})

async function startReceiver(): Promise<Receiver> {
  const hanging: ServerResponse[] = []
  const receiver: Receiver = {
    url: '',
    received: [],
    events: () => receiver.received.flatMap((r) => r.events),
    answer: 202,
    failNext: 0,
    requests: 0,
    close: async () => {
      for (const res of hanging) res.destroy()
      server.closeAllConnections()
      await new Promise((r) => server.close(r))
    },
  }
  const server: Server = createServer((req, res) => {
    receiver.requests++
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      if (receiver.answer === 'hang') {
        hanging.push(res)
        return
      }
      if (receiver.failNext > 0) {
        receiver.failNext--
        res.writeHead(503).end()
        return
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { events: NotifyEvent[] }
      receiver.received.push({ headers: req.headers, events: body.events })
      res.writeHead(receiver.answer).end()
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`
  receivers.push(receiver)
  return receiver
}

function endpoint(name: string, receiver: Receiver, extra: Record<string, unknown> = {}) {
  return { name, url: receiver.url, backoff: '20ms', timeout: '2s', ...extra }
}

describe('notifications', () => {
  const fake = useFakeUpstream()

  test('pulls through the mirror reach the endpoint as pull and fill events, with its headers', async () => {
    const receiver = await startReceiver()
    const mirror = await fake.mirror({
      config: {
        notifications: {
          endpoints: [endpoint('audit', receiver, { headers: { Authorization: TOKEN, 'X-Team': 'infra' } })],
        },
      },
    })
    const image = fake.up.addImage(REPO, 'v1', { layers: 1 })
    const layer = image.layers[0]!
    expect((await mirror.get(`/v2/${REPO}/manifests/v1`)).status).toBe(200)
    expect((await mirror.get(`/v2/${REPO}/blobs/${layer.digest}`)).status).toBe(200)
    expect((await mirror.get(`/v2/${REPO}/blobs/${layer.digest}`)).status).toBe(200)
    // A HEAD is a question, not a pull.
    expect((await mirror.head(`/v2/${REPO}/blobs/${layer.digest}`)).status).toBe(200)

    const events = await waitFor(() => receiver.events().length >= 4 && receiver.events(), {
      what: 'four events at the receiver',
    })
    await new Promise((r) => setTimeout(r, 100))
    const pulls = receiver.events().filter((e) => e.action === 'pull')
    const fills = receiver.events().filter((e) => e.action === 'fill')
    expect(pulls).toHaveLength(3)
    expect(fills).toHaveLength(1)
    expect(pulls[0]).toMatchObject({
      action: 'pull',
      target: {
        mediaType: image.mediaType,
        digest: image.manifestDigest,
        size: image.manifest.length,
        length: image.manifest.length,
        repository: REPO,
        url: `/v2/${REPO}/manifests/v1`,
        tag: 'v1',
        cache: 'miss',
      },
      request: { method: 'GET', addr: expect.stringMatching(/^127\.0\.0\.1:\d+$/) },
      actor: {},
      source: { addr: expect.stringMatching(/:\d+$/), instanceID: expect.any(String) },
    })
    expect(pulls.map((e) => e.target.cache)).toEqual(['miss', 'miss', 'hit'])
    expect(pulls[1]!.target).toMatchObject({ digest: layer.digest, size: layer.bytes.length })
    expect(fills[0]!.target).toEqual({
      mediaType: 'application/octet-stream',
      digest: layer.digest,
      size: layer.bytes.length,
      repository: REPO,
    })
    for (const e of events) {
      expect(e.id).toMatch(/^[0-9a-f-]{36}$/)
      expect(Number.isNaN(Date.parse(e.timestamp))).toBe(false)
    }
    expect(new Set(events.map((e) => e.id)).size).toBe(events.length)
    const first = receiver.received[0]!.headers
    expect(first['content-type']).toBe('application/vnd.docker.distribution.events.v1+json')
    expect(first.authorization).toBe(TOKEN)
    expect(first['x-team']).toBe('infra')
    // The token goes to the endpoint only: never into a log line.
    expect(JSON.stringify(mirror.logs)).not.toContain('hook-token')
    expect(mirror.logs.find((l) => l.event === 'notify.endpoint')).toMatchObject({
      endpoint: 'audit',
      headers: ['Authorization', 'X-Team'],
    })
  })

  test('a receiver that fails and recovers gets the events after a retry', async () => {
    const receiver = await startReceiver()
    receiver.failNext = 2
    const mirror = await fake.mirror({
      config: { notifications: { endpoints: [endpoint('flaky', receiver)] } },
    })
    const digest = fake.up.addBlob(REPO, randomBytes(2048))
    expect((await mirror.get(`/v2/${REPO}/blobs/${digest}`)).status).toBe(200)
    await waitFor(() => receiver.events().some((e) => e.action === 'pull'), {
      what: 'the pull after retries',
    })
    expect(receiver.requests).toBeGreaterThanOrEqual(3)
    const metrics = await mirror.server.metrics.registry.metrics()
    expect(metrics).toMatch(/pullcache_notification_sent_total\{endpoint="flaky"\} [1-9]/)
    expect(metrics).not.toMatch(/pullcache_notification_failed_total\{endpoint="flaky"\} [1-9]/)
    expect(mirror.logs.filter((l) => l.event === 'notify.send_failed').length).toBeGreaterThanOrEqual(2)
  })

  test('a receiver that hangs delays no pull; its overflow is dropped and counted', async () => {
    const receiver = await startReceiver()
    receiver.answer = 'hang'
    const mirror = await fake.mirror({
      config: { notifications: { endpoints: [endpoint('stuck', receiver, { timeout: '30s', queue: 3 })] } },
    })
    const digest = fake.up.addBlob(REPO, randomBytes(4096))
    expect((await mirror.get(`/v2/${REPO}/blobs/${digest}`)).status).toBe(200)
    await waitFor(() => receiver.requests >= 1, { what: 'the first POST, which never gets an answer' })
    const started = performance.now()
    for (let i = 0; i < 20; i++) expect((await mirror.get(`/v2/${REPO}/blobs/${digest}`)).status).toBe(200)
    // Twenty cached pulls take milliseconds each; a pull that waited on the receiver would take 30s.
    expect(performance.now() - started).toBeLessThan(5_000)
    const metrics = await mirror.server.metrics.registry.metrics()
    // 22 events (a fill and 21 pulls): the hanging POST holds the first one or two (the fill's
    // commit and the first pull's close may fall either side of the sender's turn), three wait,
    // the rest are dropped.
    expect(metrics).toMatch(/pullcache_notification_dropped_total\{endpoint="stuck"\} (17|18)\n/)
    expect(metrics).toMatch(/pullcache_notification_pending\{endpoint="stuck"\} 3/)
    // Shutdown gives the stuck endpoint a short deadline, not its 30s timeout.
    const closing = performance.now()
    await mirror.close()
    expect(performance.now() - closing).toBeLessThan(10_000)
  })

  test('filters: events and ignore choose what each endpoint gets', async () => {
    const fillsOnly = await startReceiver()
    const noBlobs = await startReceiver()
    const mirror = await fake.mirror({
      config: {
        notifications: {
          endpoints: [
            endpoint('fills', fillsOnly, { events: ['fill'] }),
            endpoint('manifests', noBlobs, {
              ignore: { media_types: ['application/octet-stream'], actions: ['evict'] },
            }),
          ],
        },
      },
    })
    const image = fake.up.addImage(REPO, 'v2', { layers: 1 })
    expect((await mirror.get(`/v2/${REPO}/manifests/v2`)).status).toBe(200)
    expect((await mirror.get(`/v2/${REPO}/blobs/${image.layers[0]!.digest}`)).status).toBe(200)
    await waitFor(() => fillsOnly.events().length >= 1 && noBlobs.events().length >= 1, {
      what: 'events at both receivers',
    })
    await new Promise((r) => setTimeout(r, 200))
    expect(fillsOnly.events().map((e) => e.action)).toEqual(['fill'])
    expect(noBlobs.events().map((e) => [e.action, e.target.digest])).toEqual([['pull', image.manifestDigest]])
  })

  test('evictions are told, with the digests and bytes freed', async () => {
    const receiver = await startReceiver()
    const mirror = await fake.mirror({
      config: {
        cache: { max_size: '64KiB' },
        notifications: { endpoints: [endpoint('evictions', receiver, { events: ['evict'] })] },
      },
    })
    const a = fake.up.addBlob(REPO, randomBytes(40 * 1024))
    const b = fake.up.addBlob(REPO, randomBytes(40 * 1024))
    expect((await mirror.get(`/v2/${REPO}/blobs/${a}`)).status).toBe(200)
    expect((await mirror.get(`/v2/${REPO}/blobs/${b}`)).status).toBe(200)
    const [evicted] = await waitFor(() => receiver.events().length > 0 && receiver.events(), {
      what: 'an evict event',
    })
    expect(evicted).toMatchObject({ action: 'evict', target: { digests: [a], count: 1, reason: 'size' } })
    expect(evicted!.target.bytes).toBeGreaterThanOrEqual(40 * 1024)
  })

  test('a reload (SIGHUP) moves events to the new endpoints', async () => {
    const before = await startReceiver()
    const after = await startReceiver()
    const mirror = await fake.mirror({ config: { notifications: { endpoints: [endpoint('a', before)] } } })
    const digest = fake.up.addBlob(REPO, randomBytes(1024))
    expect((await mirror.get(`/v2/${REPO}/blobs/${digest}`)).status).toBe(200)
    await waitFor(() => before.events().some((e) => e.action === 'pull'), { what: 'a pull at the first' })

    // The config SIGHUP would load: the file's endpoint gone, one given by PULLCACHE_NOTIFY_URL.
    const next = loadConfig({
      env: {
        PULLCACHE_LISTEN: '127.0.0.1:0',
        PULLCACHE_DATA_DIR: mirror.dataDir,
        PULLCACHE_UPSTREAM: fake.up.url,
        PULLCACHE_LOG_LEVEL: 'debug',
        PULLCACHE_NOTIFY_URL: after.url,
      },
    })
    expect(mirror.server.reload(next).changed).toContain('notifications')
    const seen = before.events().length
    expect((await mirror.get(`/v2/${REPO}/blobs/${digest}`)).status).toBe(200)
    await waitFor(() => after.events().some((e) => e.action === 'pull'), {
      what: 'a pull at the new endpoint',
    })
    await new Promise((r) => setTimeout(r, 100))
    expect(before.events()).toHaveLength(seen)
    // The same endpoints again: nothing changes, the queue and connection stay.
    expect(mirror.server.reload(next).changed).not.toContain('notifications')
  })
})
