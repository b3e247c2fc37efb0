import { join } from 'node:path'
import fc from 'fast-check'
import { describe, expect, test } from 'vitest'
import { IndexDb } from '../../src/store/index-db.js'
import { OLDEST_SQL } from '../../src/store/index-eviction.js'
import { PUBLIC_TOP_TAGS_SQL, TOP_TAGS_SQL } from '../../src/store/index-usage.js'
import { storeCounts } from '../../src/store/stats.js'
import { sha256 } from '../support/sha256.js'
import { tmpRoot } from '../support/tmp.js'

async function open(): Promise<IndexDb> {
  return new IndexDb(join(await tmpRoot('pullcache-totals'), 'index.db'))
}

const digest = (i: number) => sha256(String(i))

describe('running store totals', () => {
  test('follow every insert, re-commit, measurement and delete, as a sum over the rows would', async () => {
    const index = await open()
    const sums = index.database.prepare(
      'SELECT count(*) AS blobs, coalesce(sum(size), 0) AS bytes, coalesce(sum(coalesce(allocated, size)), 0) AS allocated FROM blobs',
    )
    const op = fc.oneof(
      fc.record({
        kind: fc.constant('add' as const),
        i: fc.nat(20),
        size: fc.nat(10_000),
        allocated: fc.option(fc.nat(20_000)),
      }),
      fc.record({ kind: fc.constant('measure' as const), i: fc.nat(20), allocated: fc.nat(20_000) }),
      fc.record({ kind: fc.constant('delete' as const), i: fc.nat(20) }),
    )
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        index.database.exec('DELETE FROM blobs')
        for (const o of ops) {
          if (o.kind === 'add') index.addBlob(digest(o.i), o.size, o.allocated)
          else if (o.kind === 'measure') index.setAllocated(digest(o.i), o.allocated)
          else index.deleteBlob(digest(o.i))
          const { blobs, bytes, allocated } = index.storeTotals()
          expect({ blobs, bytes, allocated }).toEqual(sums.get())
        }
      }),
      { numRuns: 50 },
    )
    index.close()
  })

  test('stats read the totals row, not a count over the tables', async () => {
    const index = await open()
    index.addBlob(digest(1), 10, 4096)
    index.setTag('registry-1.docker.io', 'library/a', 'x', digest(2), 'application/json')
    expect(storeCounts(index)).toEqual({ blobs: 1, bytes: 10, allocated_bytes: 4096, manifests: 0, tags: 1 })
    // Tampered with, the row is what stats report: nothing else was read.
    index.database.exec('UPDATE store_totals SET blobs = 1000000, tags = 100000')
    expect(storeCounts(index)).toMatchObject({ blobs: 1_000_000, tags: 100_000 })
    index.close()
  })

  test('the top-tags query walks an index and sorts nothing, for every viewer', async () => {
    const index = await open()
    const planOf = (sql: string, params: unknown[]) =>
      index.database
        .prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all(...params)
        .map((r) => (r as { detail: string }).detail)
        .join('\n')
    const all = planOf(TOP_TAGS_SQL, [0, 10])
    expect(all).toContain('tag_stats_requests')
    expect(all).not.toContain('TEMP B-TREE')
    // An anonymous viewer's list: a bounded walk of the same index, each row checked by
    // repo_access's primary key.
    const anonymous = planOf(PUBLIC_TOP_TAGS_SQL, [0, 'r', 1, 10])
    expect(anonymous).toContain('tag_stats_requests')
    expect(anonymous).toMatch(/SEARCH a EXISTS USING PRIMARY KEY/)
    expect(anonymous).not.toContain('TEMP B-TREE')
    index.close()
  })

  test('eviction walks blobs oldest first through the last_access index, from a cursor, sorting nothing', async () => {
    const index = await open()
    const plan = index.database
      .prepare(`EXPLAIN QUERY PLAN ${OLDEST_SQL}`)
      .all(1, 0, '', 10)
      .map((r) => (r as { detail: string }).detail)
      .join('\n')
    expect(plan).toMatch(/SEARCH blobs USING (COVERING )?INDEX blobs_last_access/)
    expect(plan).not.toContain('TEMP B-TREE')
    index.close()
  })
})
