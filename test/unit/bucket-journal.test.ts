// The bucket budget's bookkeeping without a bucket: journal batches merge by latest access (so
// a batch read twice changes nothing), and the evictor's lease expires only after a node has
// seen the same ETag for the lease's whole time, by its own clock.

import { describe, expect, test } from 'vitest'
import { type Access, formatBatch, mergeBatch } from '../../src/store/bucket-journal.js'
import { BucketLease } from '../../src/store/bucket-lease.js'
import type { BucketObjects, Condition, ListedObject } from '../../src/store/bucket-objects.js'

const D1 = `sha256:${'1'.repeat(64)}`
const D2 = `sha256:${'2'.repeat(64)}`

describe('journal batches', () => {
  test('merge keeps the latest access; reading a batch again moves nothing', () => {
    const merged = new Map<string, Access>()
    const early = formatBatch(new Map([[D1, { lastAccess: 1_000, hits: 2 }]]))
    const late = formatBatch(
      new Map([
        [D1, { lastAccess: 5_000, hits: 1 }],
        [D2, { lastAccess: 3_000, hits: 1 }],
      ]),
    )
    mergeBatch(late, merged)
    mergeBatch(early, merged)
    mergeBatch(late, merged)
    expect(merged.get(D1)?.lastAccess).toBe(5_000)
    expect(merged.get(D2)?.lastAccess).toBe(3_000)
  })

  test('lines that are not a digest and a time are skipped', () => {
    const merged = new Map<string, Access>()
    mergeBatch(`garbage\n${D1} notatime 1\n\n${D2} 7 1\n`, merged)
    expect([...merged.keys()]).toEqual([D2])
  })
})

/** Conditional writes as an atomic store does them, in memory. */
class MemoryObjects implements BucketObjects {
  readonly objects = new Map<string, { text: string; etag: string }>()
  private n = 0
  async *list(prefix: string): AsyncIterable<ListedObject[]> {
    yield [...this.objects]
      .filter(([key]) => key.startsWith(prefix))
      .map(([key, o]) => ({ key, size: o.text.length, lastModified: 0 }))
  }
  async read(key: string) {
    return this.objects.get(key)
  }
  async write(key: string, text: string, condition?: Condition) {
    const there = this.objects.get(key)
    if (condition !== undefined && 'ifNoneMatch' in condition && there !== undefined) return undefined
    if (condition !== undefined && 'ifMatch' in condition && there?.etag !== condition.ifMatch)
      return undefined
    const etag = `"${++this.n}"`
    this.objects.set(key, { text, etag })
    return etag
  }
  async remove(keys: readonly string[]) {
    for (const key of keys) this.objects.delete(key)
  }
  close() {}
}

describe('the evictor lease', () => {
  test('held and renewed by one node; taken over only after its ETag stood still for the ttl', async () => {
    const objects = new MemoryObjects()
    const lease = (node: string) => new BucketLease({ objects, prefix: 'p/', nodeId: node, ttlMs: 1_000 })
    const [a, b] = [lease('a'), lease('b')]
    expect(await a.acquire(0)).toBe(true)
    expect(await b.acquire(10)).toBe(false) // first sight
    expect(await a.acquire(500)).toBe(true) // renewed: a new ETag
    expect(await b.acquire(1_200)).toBe(false) // the ETag changed since b first saw it
    expect(await b.acquire(2_000)).toBe(false) // seen unchanged for 800 ms only
    expect(await b.acquire(2_300)).toBe(true) // unchanged for the whole ttl: a is gone
    expect(await a.acquire(2_400)).toBe(false)
    expect(JSON.parse(objects.objects.get('p/evictor')!.text).node).toBe('b')
  })
})
