// Webhooks with a real client: skopeo pulls an image through the built daemon (configured only by
// PULLCACHE_NOTIFY_URL) from a real distribution upstream, and a receiver on 127.0.0.1 gets a
// pull event for the tag's manifest and for every blob, and a fill event for every blob.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { NotifyEvent } from '../../src/notify/events.js'
import { waitFor } from '../support/wait-for.js'
import { AMD64, createImage, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { closeRegistryClient } from './registry-client.js'
import { createSkopeo, layoutProblems, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let skopeo: Skopeo
let pullcache: Pullcache
let image: TestImage
let receiver: Server
const events: NotifyEvent[] = []
const contentTypes = new Set<string>()

beforeAll(async () => {
  work = await makeTempDir('notify')
  receiver = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      contentTypes.add(String(req.headers['content-type']))
      events.push(...(JSON.parse(Buffer.concat(chunks).toString('utf8')) as { events: NotifyEvent[] }).events)
      res.writeHead(200).end()
    })
  })
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r))
  const port = (receiver.address() as AddressInfo).port
  upstream = await startUpstream()
  skopeo = await createSkopeo(join(work, 'skopeo'))
  image = await createImage(join(work, 'images'), {
    shortName: 'notified',
    tag: '1.0',
    format: 'docker',
    platforms: [AMD64],
    layerSizes: [32 * 1024, 200 * 1024],
  })
  await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
  pullcache = await startPullcache({
    upstream: upstream.url,
    env: { PULLCACHE_NOTIFY_URL: `http://127.0.0.1:${port}/hook` },
  })
})

afterAll(async () => {
  await pullcache?.close()
  await upstream?.close()
  await closeRegistryClient()
  receiver?.closeAllConnections()
  await new Promise((r) => receiver?.close(r) ?? r(undefined))
  await removeDir(work)
})

describe('notifications with skopeo', () => {
  it('the endpoint receives a pull for the manifest and every blob, and a fill for every blob', async () => {
    const dest = join(work, 'pull')
    const layout = await skopeo.pull(`${pullcache.hostPort}/${image.name}:${image.tag}`, dest, { all: true })
    expect(layoutProblems(layout, image), 'pulled image').toEqual([])

    const blobs = image.blobs.map((b) => b.digest).sort()
    const pulled = (digest: string) =>
      events.some(
        (e) => e.action === 'pull' && e.target.digest === digest && e.target.repository === image.name,
      )
    await waitFor(() => [image.top.digest, ...blobs].every(pulled), {
      timeoutMs: 15_000,
      what: 'a pull event for the manifest and each blob',
    })
    await waitFor(
      () => blobs.every((d) => events.some((e) => e.action === 'fill' && e.target.digest === d)),
      { timeoutMs: 15_000, what: 'a fill event for each blob' },
    )
    expect([...contentTypes]).toEqual(['application/vnd.docker.distribution.events.v1+json'])
    const byTag = events.find((e) => e.action === 'pull' && e.target.tag === image.tag)
    expect(byTag?.target).toMatchObject({ digest: image.top.digest, mediaType: image.top.mediaType })
    for (const e of events.filter((x) => x.action === 'pull')) {
      expect(e.request?.method).toBe('GET')
      expect(e.request?.useragent).not.toBe('')
      expect(e.actor).toEqual({})
      expect(e.target.cache).toMatch(/^(hit|miss|coalesced|stale)$/)
    }
    for (const digest of blobs) {
      const size = image.blobs.find((b) => b.digest === digest)!.size
      const fill = events.find((e) => e.action === 'fill' && e.target.digest === digest)
      expect(fill?.target).toMatchObject({ size, repository: image.name })
    }
    await removeDir(dest)
  })
})
