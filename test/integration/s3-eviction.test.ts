// The bucket's byte budget (storage.s3.max_size) under churn, on a real S3 server (Swift's S3
// API, started for this file by test/support/s3-server.sh; it has no compare-and-swap, so no
// lease: the evictor is the one node that owns the key). Two nodes' parts: node A evicts, node
// B serves and journals what it reads. What must hold: after each run the bucket, listed and
// summed, is within its budget; a slow client reading a blob from the bucket while the evictor
// runs gets every byte, verified; pinned blobs stay; so do blobs accessed within the grace
// period, by any node, and what the evictor's own node is reading; merged journals are removed.

import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { createLogger } from '../../src/log.js'
import { BlobStore } from '../../src/store/blob-store.js'
import { BucketEvictor } from '../../src/store/bucket-eviction.js'
import { AccessJournal } from '../../src/store/bucket-journal.js'
import { IndexDb } from '../../src/store/index-db.js'
import { S3BucketObjects } from '../../src/store/s3-bucket-objects.js'
import { S3Tier } from '../../src/store/s3-storage.js'
import { bucketKey } from '../../src/store/shared-tier.js'
import { Store } from '../../src/store/store.js'
import { sha256 } from '../support/fake-upstream.js'
import { useS3Server } from '../support/s3-server.js'
import { startMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

const PREFIX = 'pc/'
const SMALL = 8 * 1024
const BIG = 4 * 1024 * 1024
const CHURN = 512 * 1024
/** Short for the test; the sleeps wait it out (Swift rounds Last-Modified up to a whole second). */
const GRACE_MS = 2_000
const log = createLogger('error', () => {})

describe('bucket eviction against a byte budget', () => {
  const s3 = useS3Server()
  let client: S3Client

  beforeAll(() => {
    client = s3.server.client()
  })
  afterAll(() => client?.destroy())

  const settings = (bucket: string) => s3.server.settings(bucket, PREFIX)

  async function put(bucket: string, body: Buffer): Promise<string> {
    const digest = sha256(body)
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: bucketKey(PREFIX, digest), Body: body }))
    return digest
  }

  async function listed(bucket: string, under: string): Promise<{ key: string; size: number }[]> {
    const out: { key: string; size: number }[] = []
    let ContinuationToken: string | undefined
    do {
      const page = await client.send(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: `${PREFIX}${under}`, ContinuationToken }),
      )
      for (const o of page.Contents ?? []) out.push({ key: o.Key!, size: o.Size ?? 0 })
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined
    } while (ContinuationToken !== undefined)
    return out
  }

  async function blobs(bucket: string): Promise<{ bytes: number; digests: Set<string> }> {
    const all = await listed(bucket, 'blobs/')
    return {
      bytes: all.reduce((n, o) => n + o.size, 0),
      digests: new Set(all.map((o) => `sha256:${o.key.slice(o.key.lastIndexOf('/') + 1)}`)),
    }
  }

  /** A node's store: a data dir of its own, the bucket behind it. */
  async function node(bucket: string) {
    const root = await tmpRoot()
    const files = new BlobStore(root)
    await files.open()
    const index = new IndexDb(join(root, 'index.db'))
    const tier = new S3Tier(settings(bucket))
    await tier.start()
    const store = new Store(files, index, tier)
    const objects = new S3BucketObjects(settings(bucket), () => tier.capabilities)
    return {
      store,
      tier,
      objects,
      close() {
        tier.close()
        objects.close()
        index.close()
      },
    }
  }

  /**
   * Reads a body slowly (a client on a thin line): 64 KiB every 10 ms, hashed; after the first
   * MiB it waits for `gate`, so the read is surely still going on while the evictor runs.
   */
  async function readSlowly(
    body: Readable,
    gate: Promise<unknown>,
  ): Promise<{ digest: string; bytes: number }> {
    const hash = createHash('sha256')
    let bytes = 0
    for await (const chunk of body) {
      hash.update(chunk as Buffer)
      bytes += (chunk as Buffer).length
      if (bytes >= 1024 * 1024) await gate
      await sleep(10 * Math.ceil((chunk as Buffer).length / 65536))
    }
    return { digest: `sha256:${hash.digest('hex')}`, bytes }
  }

  test('under churn the bucket stays in budget; streams, pins and grace hold', async () => {
    const bucket = 'churn'
    const [a, b] = [await node(bucket), await node(bucket)]
    const journalB = new AccessJournal({
      objects: b.objects,
      prefix: PREFIX,
      nodeId: 'node-b',
      intervalMs: 60_000,
      log,
    })
    b.store.bucket.onSharedRead = (digest) => journalB.noteSoon(digest)
    try {
      // The old ones: the big blob a slow client reads, one that is pinned, one node B keeps
      // using, one node A itself is reading during the first run, and filler.
      const bigBody = randomBytes(BIG)
      const big = await put(bucket, bigBody)
      const pinned = await put(bucket, randomBytes(SMALL))
      const used = await put(bucket, randomBytes(SMALL))
      const ownRead = await put(bucket, randomBytes(SMALL))
      for (let i = 0; i < 20; i++) await put(bucket, randomBytes(SMALL))
      const maxSize = 6 * 1024 * 1024
      const evictor = new BucketEvictor({
        objects: a.objects,
        prefix: PREFIX,
        nodeId: 'node-a',
        log,
        budget: { maxSize, highWater: 0.9, lowWater: 0.7, graceMs: GRACE_MS },
        isEvictor: () => true,
        lease: () => undefined,
        pinned: async () => new Set([pinned]),
        inUse: (digest) => a.store.bucket.readingShared(digest),
      })
      expect(await evictor.run()).toMatchObject({ ran: true, run: { deleted: 0 } }) // under high water

      const evictedOverall = new Set<string>()
      for (let round = 0; round < 3; round++) {
        // Churn: new blobs push the bucket over its high-water mark once they age past grace.
        for (let i = 0; i < 10; i++) await put(bucket, randomBytes(CHURN))
        await sleep(GRACE_MS + 1_100)
        const before = await blobs(bucket)
        expect(before.bytes).toBeGreaterThan(0.9 * maxSize)
        journalB.note(used)
        let slow: Promise<{ digest: string; bytes: number }> | undefined
        let own: { body: Readable } | undefined
        let runEnded = () => {}
        const gate = new Promise<void>((resolve) => (runEnded = resolve))
        if (round === 0) {
          // A slow client on node B starts reading the big blob: its journal says so within a
          // second, and the evictor reads journals before each batch.
          const got = await b.store.bucket.fromShared(big, AbortSignal.timeout(30_000))
          slow = readSlowly(got!.body, gate)
          own = await a.store.bucket.fromShared(ownRead, AbortSignal.timeout(30_000))
          own!.body.pause()
        }
        await journalB.flush()
        const outcome = await evictor.run()
        runEnded()
        expect(outcome.ran).toBe(true)
        const after = await blobs(bucket)
        // The budget holds, by the bucket's own listing.
        expect(after.bytes).toBeLessThanOrEqual(maxSize)
        expect(outcome.ran && outcome.run.bytes).toBe(after.bytes)
        expect(outcome.ran && outcome.run.deleted).toBeGreaterThan(0)
        for (const d of before.digests) if (!after.digests.has(d)) evictedOverall.add(d)
        expect(after.digests.has(pinned)).toBe(true)
        expect(after.digests.has(used)).toBe(true)
        if (round === 0) {
          expect(after.digests.has(big)).toBe(true)
          expect(after.digests.has(ownRead)).toBe(true)
          expect(await slow).toEqual({ digest: big, bytes: BIG })
          own!.body.resume()
          own!.body.destroy()
        }
        // The batches merged are gone; only compactions remain.
        const journals = await listed(bucket, 'journal/')
        expect(journals.every((o) => o.key.includes('/_merged/'))).toBe(true)
      }
      // The old blobs nobody kept using went in least-recently-used order: the big one and
      // the one node A was reading once their reads were over and their grace had passed.
      expect(evictedOverall.has(big)).toBe(true)
      expect(evictedOverall.has(ownRead)).toBe(true)
      expect(evictedOverall.has(pinned) || evictedOverall.has(used)).toBe(false)
    } finally {
      await journalB.close()
      a.close()
      b.close()
    }
  }, 60_000)

  test('the stats show the budget and the last run', async () => {
    const mirror = await startMirror({
      upstream: 'http://127.0.0.1:9',
      env: { ...s3.server.env('stats'), PULLCACHE_S3_MAX_SIZE: '1MiB' },
    })
    try {
      const budget = await waitFor(
        async () => {
          const stats = JSON.parse((await mirror.get('/_pullcache/stats')).body.toString())
          return stats.storage.budget?.last_run === null ? undefined : stats.storage.budget
        },
        { what: 'a bucket eviction run in the stats' },
      )
      expect(budget).toMatchObject({
        max_size: 1024 * 1024,
        high_water: 0.95,
        low_water: 0.85,
        grace_seconds: 3600,
        evictor: true,
        lease: false,
        last_run: { bytes: 0, objects: 0, deleted: 0 },
      })
    } finally {
      await mirror.close()
    }
  })
})
