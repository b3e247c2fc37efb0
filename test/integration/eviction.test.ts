import { randomBytes } from 'node:crypto'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { describe, expect, test } from 'vitest'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { runCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'

const REPO = 'library/evict'

/** A CLI command that must succeed: its stdout. */
async function cliOk(args: string[]): Promise<string> {
  const r = await runCli(args)
  expect(r.code, r.stderr).toBe(0)
  return r.stdout
}

async function storedDigests(dataDir: string): Promise<string[]> {
  const root = join(dataDir, 'blobs', 'sha256')
  const out: string[] = []
  for (const prefix of await readdir(root))
    for (const f of await readdir(join(root, prefix))) out.push(`sha256:${f}`)
  return out.sort()
}

describe('eviction', () => {
  const fake = useFakeUpstream()
  let mirror: TestMirror

  test('under a tiny budget while pulls run, every pull is correct and the store shrinks to the low mark', async () => {
    mirror = await fake.mirror({ config: { cache: { max_size: '1MiB' } } })
    const blobs = Array.from({ length: 12 }, () => randomBytes(300 * 1024))
    const digests = blobs.map((b) => fake.up.addBlob(REPO, b))
    // Three waves of four concurrent pulls, each wave pushing the store over budget again.
    for (let wave = 0; wave < 3; wave++) {
      const batch = digests.slice(wave * 4, wave * 4 + 4)
      const bodies = await Promise.all(batch.map((d) => mirror.get(`/v2/${REPO}/blobs/${d}`)))
      for (const [i, b] of bodies.entries()) expect(sha256(b.body)).toBe(batch[i])
    }
    await mirror.server.evictor.idle()
    await mirror.server.evictor.run()
    const stored = await storedDigests(mirror.dataDir)
    const bytes = mirror.server.index.storeTotals().bytes
    expect(bytes).toBeLessThanOrEqual(1024 * 1024 * 0.95)
    expect(stored.length).toBe(mirror.server.index.storeTotals().blobs)
    // The most recently used blobs are the ones kept: all from the last wave.
    expect(stored.length).toBeGreaterThan(0)
    for (const d of stored) expect(digests.slice(8)).toContain(d)
    expect(mirror.logs.some((l) => l.event === 'store.evicted' && (l.blobs as number) > 0)).toBe(true)
    // An evicted blob is simply fetched again: a miss, correct bytes.
    const evicted = digests[0]!
    expect(stored).not.toContain(evicted)
    const again = await mirror.get(`/v2/${REPO}/blobs/${evicted}`)
    expect(again.headers['x-pullcache-cache']).toBe('miss')
    expect(sha256(again.body)).toBe(evicted)
  })

  test('pinned images and everything they reference survive any budget', async () => {
    mirror = await fake.mirror({
      config: { cache: { max_size: '64KiB', pins: ['library/evict:keep*'] } },
    })
    const image = fake.up.addImage(REPO, 'keep-1', { layers: 2, layerBytes: 200_000 })
    expect((await mirror.get(`/v2/${REPO}/manifests/keep-1`)).status).toBe(200)
    for (const l of image.layers) await mirror.get(`/v2/${REPO}/blobs/${l.digest}`)
    await mirror.get(`/v2/${REPO}/blobs/${image.configDigest}`)
    const other = fake.up.addBlob(REPO, randomBytes(200_000))
    await mirror.get(`/v2/${REPO}/blobs/${other}`)
    await mirror.server.evictor.idle()
    await mirror.server.evictor.run()
    const stored = await storedDigests(mirror.dataDir)
    for (const l of image.layers) expect(stored).toContain(l.digest)
    expect(stored).toContain(image.configDigest)
    expect(stored).not.toContain(other)
  })

  test('a blob a client is streaming is never deleted under it', async () => {
    mirror = await fake.mirror()
    const big = randomBytes(4 * 1024 * 1024)
    const digest = fake.up.addBlob(REPO, big)
    await mirror.get(`/v2/${REPO}/blobs/${digest}`)
    // A slow reader holds the blob open while eviction runs with the store 4x over budget.
    const res = await request(`${mirror.url}/v2/${REPO}/blobs/${digest}`, { highWaterMark: 1024 })
    expect(res.headers['x-pullcache-cache']).toBe('hit')
    const iterator = res.body[Symbol.asyncIterator]()
    const first = await iterator.next()
    mirror.server.evictor.setPolicy({
      maxSize: 1024 * 1024,
      highWater: 0.95,
      lowWater: 0.85,
      maxUnusedAgeMs: null,
      pins: [],
    })
    const result = await mirror.server.evictor.run()
    expect(result.skippedInUse).toBe(1)
    const chunks: Buffer[] = [first.value as Buffer]
    for (let next = await iterator.next(); !next.done; next = await iterator.next())
      chunks.push(next.value as Buffer)
    expect(sha256(Buffer.concat(chunks))).toBe(digest)
    // Once nobody reads it, the next run takes it.
    await new Promise((r) => setTimeout(r, 50))
    const later = await mirror.server.evictor.run()
    expect(later.blobs).toBe(1)
    expect(await storedDigests(mirror.dataDir)).toEqual([])
  })

  test('gc --dry-run lists exactly what gc then removes; manifests and tags go by age, consistently', async () => {
    mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'old', { layers: 3, layerBytes: 50_000 })
    await mirror.get(`/v2/${REPO}/manifests/old`)
    for (const l of image.layers) await mirror.get(`/v2/${REPO}/blobs/${l.digest}`)
    const dataDir = mirror.dataDir
    await mirror.close({ wipe: false })
    await new Promise((r) => setTimeout(r, 20))

    const dry = JSON.parse(
      await cliOk(['gc', '--dry-run', '--json', '--data-dir', dataDir, '--max-unused-age', '10ms']),
    )
    expect(dry.dry_run).toBe(true)
    const planned = dry.plan.blobs.map((b: { digest: string }) => b.digest).sort()
    expect(planned).toEqual(image.layers.map((l) => l.digest).sort())
    expect(dry.plan.manifests.map((m: { digest: string }) => m.digest)).toEqual([image.manifestDigest])
    expect(dry.plan.tags).toEqual([{ registry: new URL(fake.up.url).host, repo: REPO, tag: 'old' }])
    expect(await storedDigests(dataDir)).toHaveLength(3)

    const real = JSON.parse(await cliOk(['gc', '--json', '--data-dir', dataDir, '--max-unused-age', '10ms']))
    expect(real.result).toMatchObject({ blobs: 3, manifests: 1, tags: 1, bytes: dry.plan.bytes })
    expect(await storedDigests(dataDir)).toEqual([])

    // Nothing is served as a hit whose bytes are gone: the next pull fetches everything again.
    mirror = await fake.mirror({ dataDir })
    fake.up.reset()
    const tag = await mirror.get(`/v2/${REPO}/manifests/old`)
    expect(tag.headers['x-pullcache-cache']).toBe('miss')
    for (const l of image.layers) {
      const b = await mirror.get(`/v2/${REPO}/blobs/${l.digest}`)
      expect(b.headers['x-pullcache-cache']).toBe('miss')
      expect(sha256(b.body)).toBe(l.digest)
    }
  })

  test('gc with nothing to do says so and exits 0; a missing store is exit 1', async () => {
    mirror = await fake.mirror()
    const dataDir = mirror.dataDir
    await mirror.close({ wipe: false })
    const stdout = await cliOk(['gc', '--data-dir', dataDir])
    expect(stdout).toContain('freed 0 B')
    expect(await runCli(['gc', '--data-dir', join(dataDir, 'nope')])).toMatchObject({ code: 1 })
  })
})
