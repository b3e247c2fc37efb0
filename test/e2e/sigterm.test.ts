// SIGTERM while cold pulls are in flight, against the built CLI: pullcache stops accepting, lets the
// responses that can finish within its grace period (10 s) finish, cuts the rest, exits 0, and
// leaves a store that holds only verified blobs with an index that agrees with the files. Started
// again on the same data dir, it serves everything.
//
// Loopback moves 200 MB in about a second, so the counting proxy between pullcache and the fake
// Hub holds every upstream response to THROTTLE bytes a second: the 200 MB fill is then certain to
// be mid-transfer at SIGTERM and to outlast the grace period, while the small blobs, started just
// before SIGTERM, finish inside it.
//
//   clients ──> pullcache ──> counting proxy (throttled) ──> registry
import { createHash } from 'node:crypto'
import { readdir, stat } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../support/run-cli.js'
import { waitFor } from '../support/wait-for.js'
import { createBigImage, createStandardImages, type Descriptor, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { createSkopeo, hashFile, layoutProblems, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

/** pullcache serve's drain period (src/cli/serve.ts). */
const GRACE_MS = 10_000
/** Process exit, index close and scheduling on a loaded two-core machine. */
const MARGIN_MS = 5_000
const THROTTLE = 1024 * 1024

let work: string
let upstream: Upstream
let pullcache: Pullcache
let skopeo: Skopeo
let big: TestImage
let small: TestImage
let bigLayer: Descriptor

beforeAll(async () => {
  work = await makeTempDir('sigterm')
  upstream = await startUpstream()
  skopeo = await createSkopeo(join(work, 'skopeo'))
  big = await createBigImage(join(work, 'images'))
  small = (await createStandardImages(join(work, 'images'))).small
  for (const image of [big, small]) await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
  const [layer] = big.manifests[0]?.layers ?? []
  if (layer === undefined) throw new Error('big image has no layer')
  bigLayer = layer
  upstream.proxy.setRate(THROTTLE)
  pullcache = await startPullcache({ upstream: upstream.url })
})

afterAll(async () => {
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

describe('SIGTERM during cold pulls', () => {
  it('drains: finishes what it can within the grace period, cuts the rest, exits 0, leaves a clean store', async () => {
    const blobUrl = (image: TestImage, digest: string) => `${pullcache.url}/v2/${image.name}/blobs/${digest}`
    // Three clients on the cold 200 MB blob (one fill, two passengers).
    const bigGets = Array.from({ length: 3 }, () => rawGet(blobUrl(big, bigLayer.digest)))
    const tmp = join(pullcache.dataDir, 'tmp')
    await waitFor(
      async () => {
        for (const name of await readdir(tmp)) {
          if ((await stat(join(tmp, name))).size >= 2 * 1024 * 1024) return true
        }
        return undefined
      },
      { timeoutMs: 30_000, what: 'the 200 MB fill to be a few MB into its temp file' },
    )
    // Cold small blobs, each in flight (response headers in) when SIGTERM comes.
    const smallBlobs: { image: TestImage; blob: Descriptor }[] = [
      ...small.blobs.map((blob) => ({ image: small, blob })),
      { image: big, blob: big.manifests[0]!.config },
    ]
    const smallGets = smallBlobs.map(({ image, blob }) => rawGet(blobUrl(image, blob.digest)))
    for (const get of smallGets) expect(await get.status).toBe(200)

    const mark = pullcache.mark()
    const sent = Date.now()
    const stopped = pullcache.stop(GRACE_MS + 30_000)
    // Not accepting any more: once it says "stopping" (logged in the same tick as it stops
    // listening), a new connection is refused while the old ones drain.
    await waitFor(
      async () => (pullcache.lines.slice(mark).some((l) => l.event === 'stopping') ? true : undefined),
      {
        timeoutMs: 5_000,
        what: 'the "stopping" log line',
      },
    )
    const late = await rawGet(`${pullcache.url}/v2/`).done
    expect(late.error, 'a connection opened during the drain').toMatch(/ECONNREFUSED/)

    const exit = await stopped
    const tookMs = Date.now() - sent
    const log = pullcache.lines.slice(mark)
    const lastWords = log.map((l) => JSON.stringify(l)).join('\n')
    expect(exit, lastWords).toEqual({ code: 0, signal: null })
    expect(tookMs, lastWords).toBeLessThan(GRACE_MS + MARGIN_MS)
    expect(log.find((l) => l.event === 'stopping')?.signal, lastWords).toBe('SIGTERM')
    expect(
      log.some((l) => l.event === 'stopped'),
      lastWords,
    ).toBe(true)

    // The small responses were in flight at SIGTERM and finished, with the right bytes.
    for (const [i, get] of smallGets.entries()) {
      const r = await get.done
      const { blob } = smallBlobs[i]!
      expect(r, `small blob ${blob.digest}`).toMatchObject({
        status: 200,
        complete: true,
        bytes: blob.size,
        digest: blob.digest,
      })
    }
    // The 200 MB ones could not finish at THROTTLE bytes a second: cut short, never a clean end.
    for (const get of bigGets) {
      const r = await get.done
      expect(r.status).toBe(200)
      expect(r.complete, `big blob client got ${r.bytes} bytes`).toBe(false)
      expect(r.bytes).toBeLessThan(bigLayer.size)
    }

    const store = await checkStore(pullcache.dataDir)
    for (const { blob } of smallBlobs) expect(store.get(blob.digest), blob.digest).toBe(blob.size)
    expect(store.has(bigLayer.digest)).toBe(false)
    await verifyWithCli(pullcache.dataDir)
  })

  it('restarts on the same data dir and serves every image, fetching only what was cut', async () => {
    upstream.proxy.setRate(null)
    const mark = pullcache.mark()
    await pullcache.start()
    const opened = pullcache.lines.slice(mark).find((l) => l.event === 'store.opened')
    // The SIGTERM stop was clean: its mark lets this start trust the index without a pass.
    expect(opened).toMatchObject({ removed_temp_files: 0, index_trusted: true })

    upstream.proxy.reset()
    for (const image of [big, small]) {
      const layout = await skopeo.pull(
        `${pullcache.hostPort}/${image.name}:${image.tag}`,
        join(work, image.shortName),
      )
      expect(layoutProblems(layout, image)).toEqual([])
    }
    const downloads = upstream.proxy
      .filter({ kind: 'blob', method: 'GET', status: 'success' })
      .map((r) => r.reference)
    expect(downloads, upstream.proxy.describe({ kind: 'blob' })).toEqual([bigLayer.digest])

    await pullcache.stop()
    const store = await checkStore(pullcache.dataDir)
    for (const blob of [...big.blobs, ...small.blobs])
      expect(store.get(blob.digest), blob.digest).toBe(blob.size)
    await verifyWithCli(pullcache.dataDir)
  })
})

/**
 * What a stopped pullcache must leave: nothing in tmp/, every file under blobs/sha256/ hashing to
 * its name, a blobs row for every file (same size) and a file for every row. Returns digest -> size.
 */
async function checkStore(dataDir: string): Promise<Map<string, number>> {
  const leftovers = await readdir(join(dataDir, 'tmp')).catch(() => [])
  expect(leftovers, `files left in ${dataDir}/tmp`).toEqual([])

  const files = new Map<string, number>()
  const root = join(dataDir, 'blobs', 'sha256')
  for (const prefix of await readdir(root)) {
    for (const name of await readdir(join(root, prefix))) {
      const { digest, size } = await hashFile(join(root, prefix, name))
      expect(digest, `${root}/${prefix}/${name}`).toBe(`sha256:${name}`)
      expect(name.startsWith(prefix), `${name} under ${prefix}/`).toBe(true)
      files.set(digest, size)
    }
  }

  const db = new Database(join(dataDir, 'index.db'), { readonly: true, fileMustExist: true })
  let rows: { digest: string; size: number }[]
  try {
    rows = db.prepare('SELECT digest, size FROM blobs').all() as { digest: string; size: number }[]
  } finally {
    db.close()
  }
  const indexed = new Map(rows.map((r) => [r.digest, r.size]))
  expect(indexed, 'index rows (digest -> size) against the files').toEqual(files)
  return files
}

/** `pullcache verify` agrees: every blob hashes to its name and the index matches the files. */
async function verifyWithCli(dataDir: string): Promise<void> {
  const result = await runCli(['verify', '--data-dir', dataDir], { timeoutMs: 120_000 })
  expect(result.code, `pullcache verify\n${result.stdout}\n${result.stderr}`).toBe(0)
}

type RawResult = {
  status: number | null
  bytes: number
  digest: string
  /** The whole body arrived (Content-Length satisfied, clean end). */
  complete: boolean
  error: string | null
}

/**
 * A GET on its own connection (no keep-alive pool, so "refused" means refused), hashing the body as
 * it streams. `status` resolves when the response head is in; `done` never rejects.
 */
function rawGet(url: string): { status: Promise<number | null>; done: Promise<RawResult> } {
  let onStatus!: (status: number | null) => void
  const status = new Promise<number | null>((resolve) => {
    onStatus = resolve
  })
  const done = new Promise<RawResult>((resolve) => {
    const hash = createHash('sha256')
    const result: RawResult = { status: null, bytes: 0, digest: '', complete: false, error: null }
    const finish = () => {
      result.digest = `sha256:${hash.digest('hex')}`
      onStatus(result.status)
      resolve(result)
    }
    const req = request(url, { agent: false, timeout: 60_000 }, (res) => {
      result.status = res.statusCode ?? null
      onStatus(result.status)
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk)
        result.bytes += chunk.length
      })
      res.on('error', (error) => {
        result.error = error.message
      })
      res.on('close', () => {
        result.complete = res.complete
        finish()
      })
    })
    req.on('timeout', () => req.destroy(new Error('client timeout')))
    req.on('error', (error: NodeJS.ErrnoException) => {
      result.error = `${error.code ?? ''} ${error.message}`
      if (result.status === null) finish()
    })
    req.end()
  })
  return { status, done }
}
