import { randomBytes } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { describe, expect, test } from 'vitest'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { startMirror, type TestMirror } from '../support/start-mirror.js'
import { waitFor } from '../support/wait-for.js'

const REPO = 'library/blobby'

describe('blobs', () => {
  const fake = useFakeUpstream()
  let mirror: TestMirror

  const blobPath = (digest: string) => `/v2/${REPO}/blobs/${digest}`
  const cdnGets = (digest: string) => fake.up.count('GET', `/blobs/${digest}`, 'cdn')

  test('a cold GET streams from upstream, is stored, and a second GET is a hit with no upstream call', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(3 * 1024 * 1024 + 17)
    const digest = fake.up.addBlob(REPO, bytes)

    const first = await mirror.get(blobPath(digest))
    expect(first.status).toBe(200)
    expect(sha256(first.body)).toBe(digest)
    expect(first.headers['docker-content-digest']).toBe(digest)
    expect(first.headers['content-length']).toBe(String(bytes.length))
    expect(first.headers['x-pullcache-cache']).toBe('miss')
    expect(cdnGets(digest)).toBe(1)
    expect(fake.up.cdnAuthorizationLeaks).toBe(0)

    const hex = digest.slice(7)
    const stored = await readFile(join(mirror.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex))
    expect(sha256(stored)).toBe(digest)

    fake.up.reset()
    const second = await mirror.get(blobPath(digest))
    expect(second.headers['x-pullcache-cache']).toBe('hit')
    expect(sha256(second.body)).toBe(digest)
    expect(fake.up.requests.length).toBe(0)
  })

  test('ten concurrent cold GETs of one blob cause one upstream GET, all correct', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(8 * 1024 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    // Slow the body so the followers really arrive while the fill is running.
    fake.up.fault(
      { path: `/blobs/${digest}`, host: 'cdn' },
      { kind: 'slow', chunkBytes: 512 * 1024, delayMs: 20 },
    )

    const bodies = await Promise.all(Array.from({ length: 10 }, () => mirror.get(blobPath(digest))))
    for (const b of bodies) {
      expect(b.status).toBe(200)
      expect(sha256(b.body)).toBe(digest)
    }
    expect(cdnGets(digest)).toBe(1)
    const results = bodies.map((b) => b.headers['x-pullcache-cache']).sort()
    expect(results.filter((r) => r === 'miss')).toHaveLength(1)
    expect(results.filter((r) => r === 'coalesced')).toHaveLength(9)
  })

  test('fills at once and one after the other, in chunks across write batches: every follower gets its own blob', async () => {
    // Fills copy upstream's chunks into pooled batch buffers (src/mirror/blob-fill.ts) that
    // followers read while they are kept and the next fills reuse: a buffer reused too early
    // shows here as another blob's bytes in some client's body.
    mirror = await fake.mirror()
    const blobs = [5 * 1024 * 1024 + 3, 4 * 1024 * 1024 + 11, 3 * 1024 * 1024 + 7].map((size) => {
      const digest = fake.up.addBlob(REPO, randomBytes(size))
      fake.up.fault(
        { path: `/blobs/${digest}`, host: 'cdn' },
        { kind: 'slow', chunkBytes: 300_001, delayMs: 5 },
      )
      return digest
    })
    const pull = (digest: string) =>
      Promise.all(Array.from({ length: 5 }, () => mirror.get(blobPath(digest))))
    const together = await Promise.all([pull(blobs[0]!), pull(blobs[1]!)])
    const after = await pull(blobs[2]!)
    for (const [i, bodies] of [...together, after].entries()) {
      for (const b of bodies) {
        expect(b.status).toBe(200)
        expect(sha256(b.body)).toBe(blobs[i])
      }
      expect(cdnGets(blobs[i]!)).toBe(1)
    }
  })

  test('a follower arriving mid-download streams what is already written without waiting for the end', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(4 * 1024 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault(
      { path: `/blobs/${digest}`, host: 'cdn' },
      { kind: 'slow', chunkBytes: 256 * 1024, delayMs: 100 },
    )

    const leader = mirror.get(blobPath(digest))
    await waitFor(() => cdnGets(digest) === 1, { what: 'the fill to start upstream' })
    await new Promise((r) => setTimeout(r, 300))
    // The follower's first bytes must come long before the fill ends (~1.6 s from start).
    // Node sends the response head with the first body bytes, so time from the request.
    const sentAt = Date.now()
    const res = await request(`${mirror.url}${blobPath(digest)}`)
    const chunks: Buffer[] = []
    let firstChunkAt = 0
    for await (const chunk of res.body) {
      if (firstChunkAt === 0) firstChunkAt = Date.now()
      chunks.push(chunk as Buffer)
    }
    const doneAt = Date.now()
    expect(res.headers['x-pullcache-cache']).toBe('coalesced')
    expect(sha256(Buffer.concat(chunks))).toBe(digest)
    // Streamed as the fill grows: the first bytes come soon after the request, not once the fill
    // is done (which is most of the follower's wait).
    expect(firstChunkAt - sentAt).toBeLessThan((doneAt - sentAt) / 2)
    expect(doneAt - firstChunkAt).toBeGreaterThan(300)
    expect(sha256((await leader).body)).toBe(digest)
    expect(cdnGets(digest)).toBe(1)
  })

  test('Range on a cached blob answers 206 with Content-Range; unsatisfiable is 416', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(100_000)
    const digest = fake.up.addBlob(REPO, bytes)
    await mirror.get(blobPath(digest))

    const mid = await mirror.get(blobPath(digest), { range: 'bytes=1000-1999' })
    expect(mid.status).toBe(206)
    expect(mid.headers['content-range']).toBe(`bytes 1000-1999/${bytes.length}`)
    expect(mid.body.equals(bytes.subarray(1000, 2000))).toBe(true)

    const open = await mirror.get(blobPath(digest), { range: 'bytes=99000-' })
    expect(open.status).toBe(206)
    expect(open.body.equals(bytes.subarray(99000))).toBe(true)

    const suffix = await mirror.get(blobPath(digest), { range: 'bytes=-10' })
    expect(suffix.body.equals(bytes.subarray(bytes.length - 10))).toBe(true)

    const bad = await mirror.get(blobPath(digest), { range: `bytes=${bytes.length}-` })
    expect(bad.status).toBe(416)
    expect(bad.headers['content-range']).toBe(`bytes */${bytes.length}`)
    expect(JSON.parse(bad.body.toString()).errors[0].code).toBe('RANGE_INVALID')

    // Multi-range: the whole body with 200 is a valid answer, and what clients expect.
    const multi = await mirror.get(blobPath(digest), { range: 'bytes=0-1,5-6' })
    expect(multi.status).toBe(200)
    expect(multi.body.length).toBe(bytes.length)
  })

  test('Range on a cold blob and on an in-flight blob: 206 with the right bytes, one upstream GET', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(2 * 1024 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault(
      { path: `/blobs/${digest}`, host: 'cdn' },
      { kind: 'slow', chunkBytes: 128 * 1024, delayMs: 10 },
    )

    const [cold, follower] = await Promise.all([
      mirror.get(blobPath(digest), { range: 'bytes=1048576-' }),
      mirror.get(blobPath(digest), { range: 'bytes=10-19' }),
    ])
    expect(cold.status).toBe(206)
    expect(cold.headers['content-range']).toBe(`bytes 1048576-${bytes.length - 1}/${bytes.length}`)
    expect(cold.body.equals(bytes.subarray(1048576))).toBe(true)
    expect(follower.status).toBe(206)
    expect(follower.body.equals(bytes.subarray(10, 20))).toBe(true)
    expect(cdnGets(digest)).toBe(1)
  })

  test('HEAD on a cold blob asks upstream with HEAD and downloads nothing', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(50_000)
    const digest = fake.up.addBlob(REPO, bytes)
    const res = await mirror.head(blobPath(digest))
    expect(res.status).toBe(200)
    expect(res.headers['content-length']).toBe(String(bytes.length))
    expect(res.headers['docker-content-digest']).toBe(digest)
    // One HEAD, repeated once with a token after the 401 challenge.
    expect(
      fake.up.requests.filter((r) => r.method === 'HEAD' && r.authorization?.startsWith('Bearer')),
    ).toHaveLength(1)
    expect(fake.up.count('GET', `/v2/${REPO}/blobs/${digest}`)).toBe(0)
    expect(cdnGets(digest)).toBe(0)
    expect(await readdir(join(mirror.dataDir, 'blobs', 'sha256'))).toEqual([])
  })

  test('a corrupt body is not committed and every client connection is cut, not ended', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(1024 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault({ path: `/blobs/${digest}`, host: 'cdn' }, { kind: 'corrupt' }, 1)

    const outcomes = await Promise.all(
      Array.from({ length: 3 }, () => fetchOutcome(`${mirror.url}${blobPath(digest)}`)),
    )
    for (const o of outcomes) {
      expect(o.error).toBeDefined()
      expect(o.bytes).toBeLessThan(bytes.length)
    }
    expect(await storedFiles(mirror.dataDir)).toEqual([])
    // The temp file goes once the fill has unwound, which may be just after the clients were cut.
    await waitFor(async () => (await readdir(join(mirror.dataDir, 'tmp'))).length === 0, {
      what: 'the failed fill to remove its temp file',
    })

    // The next pull fetches again and succeeds.
    const again = await mirror.get(blobPath(digest))
    expect(sha256(again.body)).toBe(digest)
    expect(again.headers['x-pullcache-cache']).toBe('miss')
  })

  test('a cut upstream stream is not committed and the client sees the failure', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(2 * 1024 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault({ path: `/blobs/${digest}`, host: 'cdn' }, { kind: 'cut', afterBytes: 700_000 }, 1)
    const o = await fetchOutcome(`${mirror.url}${blobPath(digest)}`)
    expect(o.error).toBeDefined()
    expect(await storedFiles(mirror.dataDir)).toEqual([])
    const again = await mirror.get(blobPath(digest))
    expect(sha256(again.body)).toBe(digest)
  })

  test('a client that disconnects does not abort the fill', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(4 * 1024 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault(
      { path: `/blobs/${digest}`, host: 'cdn' },
      { kind: 'slow', chunkBytes: 256 * 1024, delayMs: 20 },
    )
    const ac = new AbortController()
    const res = await request(`${mirror.url}${blobPath(digest)}`, { signal: ac.signal })
    for await (const _ of res.body) {
      ac.abort()
      break
    }
    await waitFor(() => mirror.logs.some((l) => l.event === 'store.blob_committed' && l.digest === digest), {
      timeoutMs: 10_000,
      what: 'the fill to commit',
    })
    expect(await storedFiles(mirror.dataDir)).toEqual([digest.slice(7)])
    fake.up.reset()
    const hit = await mirror.get(blobPath(digest))
    expect(hit.headers['x-pullcache-cache']).toBe('hit')
    expect(sha256(hit.body)).toBe(digest)
    expect(fake.up.requests.length).toBe(0)
  })

  test('upstream 404 is BLOB_UNKNOWN, 429 passes Retry-After, 5xx and refused connections are 503', async () => {
    mirror = await fake.mirror()
    const missing = sha256(Buffer.from('nothing here'))
    const r404 = await mirror.get(blobPath(missing))
    expect(r404.status).toBe(404)
    expect(JSON.parse(r404.body.toString()).errors[0].code).toBe('BLOB_UNKNOWN')

    const d429 = fake.up.addBlob(REPO, randomBytes(100))
    fake.up.fault(
      { path: `/v2/${REPO}/blobs/${d429}` },
      { kind: 'status', status: 429, headers: { 'retry-after': '42' } },
      1,
    )
    const r429 = await mirror.get(blobPath(d429))
    expect(r429.status).toBe(429)
    expect(r429.headers['retry-after']).toBe('42')
    expect(JSON.parse(r429.body.toString()).errors[0].code).toBe('TOOMANYREQUESTS')

    const d500 = fake.up.addBlob(REPO, randomBytes(100))
    fake.up.fault({ path: `/v2/${REPO}/blobs/${d500}` }, { kind: 'status', status: 500 }, 1)
    const r500 = await mirror.get(blobPath(d500))
    expect(r500.status).toBe(503)
    expect(JSON.parse(r500.body.toString()).errors[0].code).toBe('UNAVAILABLE')

    const down = await startMirror({ upstream: 'http://127.0.0.1:1' })
    try {
      const r = await down.get(blobPath(d500))
      expect(r.status).toBe(503)
      expect(JSON.parse(r.body.toString()).errors[0].code).toBe('UNAVAILABLE')
    } finally {
      await down.close()
    }
  })

  test('a restart keeps committed blobs and removes leftover temp files', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(200_000)
    const digest = fake.up.addBlob(REPO, bytes)
    await mirror.get(blobPath(digest))
    const dataDir = mirror.dataDir
    await mirror.close({ wipe: false })
    const { writeFile } = await import('node:fs/promises')
    await writeFile(join(dataDir, 'tmp', 'deadbeef.part'), 'leftover')

    mirror = await fake.mirror({ dataDir })
    expect(await readdir(join(dataDir, 'tmp'))).toEqual([])
    fake.up.reset()
    const hit = await mirror.get(blobPath(digest))
    expect(hit.headers['x-pullcache-cache']).toBe('hit')
    expect(fake.up.requests.length).toBe(0)
  })

  test('the index forgets a blob whose file was deleted, and the next GET fetches it again', async () => {
    mirror = await fake.mirror()
    const bytes = randomBytes(10_000)
    const digest = fake.up.addBlob(REPO, bytes)
    await mirror.get(blobPath(digest))
    const hex = digest.slice(7)
    const { unlink } = await import('node:fs/promises')
    await unlink(join(mirror.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex))
    const again = await mirror.get(blobPath(digest))
    expect(again.headers['x-pullcache-cache']).toBe('miss')
    expect(sha256(again.body)).toBe(digest)
  })
})

async function fetchOutcome(url: string): Promise<{ bytes: number; error: Error | undefined }> {
  let bytes = 0
  try {
    const res = await request(url)
    for await (const chunk of res.body) bytes += (chunk as Buffer).length
    return { bytes, error: undefined }
  } catch (err) {
    return { bytes, error: err as Error }
  }
}

async function storedFiles(dataDir: string): Promise<string[]> {
  const root = join(dataDir, 'blobs', 'sha256')
  const out: string[] = []
  for (const prefix of await readdir(root)) out.push(...(await readdir(join(root, prefix))))
  return out
}
