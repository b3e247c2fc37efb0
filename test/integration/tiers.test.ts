// Mirrors in tiers: a site pullcache whose upstream is a central pullcache in front of the
// registry. The central answers HEAD for a blob it does not hold without downloading it, sends
// Age on tag answers so a site's window starts when the central checked the tag (staleness is
// bounded by the larger window, not the sum), and every request a pullcache sends carries a Via
// chain, so a request that comes back round a loop of mirrors is refused at once. The site keeps
// serving what it holds while the central is down.

import { createServer, request as httpRequest, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, test } from 'vitest'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'

const REPO = 'library/tiered'
const ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
].join(', ')

/** One request a forwarder passed on, and what came back. */
interface Forwarded {
  method: string
  path: string
  via: string | undefined
  status: number
}

/**
 * An HTTP forwarder between two mirrors: what passes, and optionally extra response headers (a
 * central that says its answers are old). Its target is set after both ends have ports.
 */
async function startForwarder() {
  let target = ''
  let extra: Record<string, string> = {}
  const seen: Forwarded[] = []
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', target)
    const out = httpRequest(
      url,
      { method: req.method, headers: { ...req.headers, host: url.host } },
      (answer) => {
        const status = answer.statusCode ?? 502
        seen.push({ method: req.method ?? '', path: url.pathname, via: req.headers.via, status })
        res.writeHead(status, { ...answer.headers, ...extra })
        answer.pipe(res)
      },
    )
    out.on('error', () => res.destroy())
    req.pipe(out)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    forwardTo(origin: string) {
      target = origin
    },
    addHeaders(headers: Record<string, string>) {
      extra = headers
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

type Forwarder = Awaited<ReturnType<typeof startForwarder>>

describe('a site pullcache in front of a central one', () => {
  const fake = useFakeUpstream()
  const forwarders: Forwarder[] = []
  const forwarder = async () => {
    const f = await startForwarder()
    forwarders.push(f)
    return f
  }
  afterEach(async () => {
    for (const f of forwarders.splice(0)) await f.close()
  })

  test('pulls through both; the registry sees one Via chain naming the site, then the central', async () => {
    const image = fake.up.addImage(REPO, 'v1', { layers: 1, layerBytes: 300_000 })
    const central = await fake.mirror()
    const site = await fake.mirror({ upstream: central.url })

    const manifest = await site.get(`/v2/${REPO}/manifests/v1`, { accept: ACCEPT })
    expect(manifest.status).toBe(200)
    expect(manifest.headers['docker-content-digest']).toBe(image.manifestDigest)
    const layer = image.layers[0]!
    const blob = await site.get(`/v2/${REPO}/blobs/${layer.digest}`)
    expect(blob.status).toBe(200)
    expect(blob.body.equals(Buffer.from(layer.bytes))).toBe(true)

    const chains = new Set(
      fake.up.requests.filter((r) => r.path.startsWith(`/v2/${REPO}/`)).map((r) => r.via),
    )
    expect(chains.size, [...chains].join('\n')).toBe(1)
    const [chain] = chains
    expect(chain).toMatch(/^1\.1 pullcache-[0-9a-f]{12}, 1\.1 pullcache-[0-9a-f]{12}$/)
    const [siteId, centralId] = chain!.split(', ')
    expect(siteId).not.toBe(centralId)
  })

  test('the central answers HEAD for a blob it does not hold without downloading it', async () => {
    const image = fake.up.addImage(REPO, 'v2', { layers: 1, layerBytes: 200_000 })
    const central = await fake.mirror()
    const site = await fake.mirror({ upstream: central.url })
    const layer = image.layers[0]!
    fake.up.reset()
    const head = await site.head(`/v2/${REPO}/blobs/${layer.digest}`)
    expect(head.status).toBe(200)
    expect(head.headers['content-length']).toBe(String(layer.bytes.length))
    expect(fake.up.count('GET', `/v2/${REPO}/blobs/${layer.digest}`)).toBe(0)
  })

  test("tag answers carry Age, and a site's window starts when the central checked the tag", async () => {
    fake.up.addImage(REPO, 'v3')
    const central = await fake.mirror()
    const first = await central.get(`/v2/${REPO}/manifests/v3`, { accept: ACCEPT })
    expect(first.headers.age).toBe('0')
    const digest = first.headers['docker-content-digest']
    // By digest there is no tag to be old.
    expect(
      (await central.get(`/v2/${REPO}/manifests/${digest}`, { accept: ACCEPT })).headers.age,
    ).toBeUndefined()

    // The central's answers pass a forwarder that says they are an hour old: the site's 60 s
    // window is over as soon as it starts, so each pull asks again.
    const old = await forwarder()
    old.forwardTo(central.url)
    old.addHeaders({ age: '3600' })
    const site = await fake.mirror({ upstream: old.url })
    for (let i = 0; i < 2; i++) {
      const got = await site.get(`/v2/${REPO}/manifests/v3`, { accept: ACCEPT })
      expect(got.status).toBe(200)
      expect(Number(got.headers.age)).toBeGreaterThanOrEqual(3600)
    }
    const heads = (f: Forwarder) =>
      f.seen.filter((r) => r.method === 'HEAD' && r.path === `/v2/${REPO}/manifests/v3`)
    expect(heads(old)).toHaveLength(2)

    // The same through a forwarder that adds nothing: the second pull is inside the window.
    const fresh = await forwarder()
    fresh.forwardTo(central.url)
    const other = await fake.mirror({ upstream: fresh.url })
    for (let i = 0; i < 2; i++)
      expect((await other.get(`/v2/${REPO}/manifests/v3`, { accept: ACCEPT })).status).toBe(200)
    expect(heads(fresh)).toHaveLength(1)
  })

  test('a request that comes back round a loop is refused at once with 508 LOOP_DETECTED', async () => {
    fake.up.addImage(REPO, 'v4')
    // A pullcache whose upstream is, through a forwarder, itself.
    const loop = await forwarder()
    const node = await fake.mirror({ upstream: loop.url })
    loop.forwardTo(node.url)
    const started = Date.now()
    const got = await node.get(`/v2/${REPO}/manifests/v4`, { accept: ACCEPT })
    expect(got.status).toBeGreaterThanOrEqual(500)
    // Not the 30 s upstream deadline of a node waiting on its own fetch.
    expect(Date.now() - started).toBeLessThan(10_000)
    const refused = loop.seen.filter((r) => r.path === `/v2/${REPO}/manifests/v4`)
    expect(refused.length).toBeGreaterThan(0)
    expect(refused.every((r) => r.status === 508)).toBe(true)
    expect(fake.up.count('HEAD', `/v2/${REPO}/manifests/v4`)).toBe(0)
    // The refusal itself, as the looping node received it: an OCI error naming the loop.
    const direct = await node.get(`/v2/${REPO}/manifests/v4`, { via: refused[0]!.via!, accept: ACCEPT })
    expect(direct.status).toBe(508)
    expect(JSON.parse(direct.body.toString()).errors[0].code).toBe('LOOP_DETECTED')
  })

  test('the site serves what it holds, marked stale, while the central is down', async () => {
    const image = fake.up.addImage(REPO, 'v5')
    const central = await fake.mirror()
    const site = await fake.mirror({ upstream: central.url, env: { PULLCACHE_TAG_FRESHNESS: '0s' } })
    expect((await site.get(`/v2/${REPO}/manifests/v5`, { accept: ACCEPT })).status).toBe(200)
    await central.close()
    const stale = await site.get(`/v2/${REPO}/manifests/v5`, { accept: ACCEPT })
    expect(stale.status).toBe(200)
    expect(stale.headers['docker-content-digest']).toBe(image.manifestDigest)
    expect(stale.headers['x-pullcache-cache']).toBe('stale')
  })
})
