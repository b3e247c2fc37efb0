// The bucket's evictor lease on a store with atomic compare-and-swap: Ceph RGW (started for this
// file by test/support/ceph-rgw.sh). What must hold: the start-up probe finds conditional create
// and replace (with RGW's unquoted If-Match); of two evictors racing for the lease, whether it is
// new or expired, exactly one evicts and the other deletes nothing.

import { randomBytes } from 'node:crypto'
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { createLogger } from '../../src/log.js'
import { BucketEvictor, type RunOutcome } from '../../src/store/bucket-eviction.js'
import { BucketLease } from '../../src/store/bucket-lease.js'
import { S3BucketObjects } from '../../src/store/s3-bucket-objects.js'
import { S3Tier } from '../../src/store/s3-storage.js'
import { bucketKey } from '../../src/store/shared-tier.js'
import { useCephRgw } from '../support/ceph-rgw.js'
import { sha256 } from '../support/fake-upstream.js'

const PREFIX = 'pc/'
const log = createLogger('error', () => {})

describe('bucket eviction lease on Ceph RGW', () => {
  const rgw = useCephRgw()
  let client: S3Client
  const settings = (bucket: string) => rgw.server.settings(bucket, PREFIX)

  beforeAll(() => {
    client = rgw.server.client()
  })
  afterAll(() => client?.destroy())

  /** `n` blobs of 4 KiB, written an hour "ago" as far as eviction is concerned (grace 0). */
  async function fill(bucket: string, n: number): Promise<void> {
    await Promise.all(
      Array.from({ length: n }, async () => {
        const body = randomBytes(4096)
        const Key = bucketKey(PREFIX, sha256(body))
        await client.send(new PutObjectCommand({ Bucket: bucket, Key, Body: body }))
      }),
    )
  }

  async function blobCount(bucket: string): Promise<number> {
    const res = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${PREFIX}blobs/` }))
    return res.KeyCount ?? 0
  }

  test('the probe finds conditional create and compare-and-swap (unquoted ETag)', async () => {
    const tier = new S3Tier(settings('probe-ceph'))
    try {
      const { capabilities } = await tier.start()
      expect(capabilities.conditionalCreate).toBe(true)
      expect(capabilities.conditionalReplace).toBe(true)
      expect(capabilities.ifMatchBare).toBe(true)
    } finally {
      tier.close()
    }
  })

  test('two evictors racing for the lease: exactly one evicts, new lease or expired', async () => {
    const bucket = 'lease-race'
    const tier = new S3Tier(settings(bucket))
    await tier.start()
    const opened: S3BucketObjects[] = []
    // Members that disagree: both believe they are the evictor; only the lease can keep one out.
    const evictor = (node: string) => {
      const objects = new S3BucketObjects(settings(bucket), () => tier.capabilities)
      opened.push(objects)
      const lease = new BucketLease({ objects, prefix: PREFIX, nodeId: node, ttlMs: 0 })
      return {
        lease,
        evictor: new BucketEvictor({
          objects,
          prefix: PREFIX,
          nodeId: node,
          log,
          budget: { maxSize: 40 * 4096, highWater: 0.5, lowWater: 0.25, graceMs: 0 },
          isEvictor: () => true,
          lease: () => lease,
        }),
      }
    }
    try {
      const ran = (outcomes: RunOutcome[]) => outcomes.filter((o) => o.ran)
      const deleted = (outcomes: RunOutcome[]) => outcomes.map((o) => (o.ran ? o.run.deleted : 0))

      // No lease object yet: both create it with If-None-Match: *.
      await fill(bucket, 40)
      const [a, b] = [evictor('node-a'), evictor('node-b')]
      const first = await Promise.all([a.evictor.run(), b.evictor.run()])
      expect(ran(first)).toHaveLength(1)
      expect(first.find((o) => !o.ran)).toEqual({ ran: false, reason: 'lease held elsewhere' })
      expect(deleted(first).sort()).toEqual([0, 30])
      expect(await blobCount(bucket)).toBe(10)

      // A lease both have seen unchanged for its whole time (ttl 0 here): both take it over
      // with If-Match on the same ETag, and one wins.
      await fill(bucket, 30)
      const [c, d] = [evictor('node-c'), evictor('node-d')]
      expect(await c.lease.acquire()).toBe(false) // first sight of another node's lease
      expect(await d.lease.acquire()).toBe(false)
      const second = await Promise.all([c.evictor.run(), d.evictor.run()])
      expect(ran(second)).toHaveLength(1)
      expect(deleted(second).sort()).toEqual([0, 30])
      expect(await blobCount(bucket)).toBe(10)
    } finally {
      tier.close()
      for (const o of opened) o.close()
    }
  })
})
