import { join } from 'node:path'
import Database from 'better-sqlite3'
import { describe, expect, test } from 'vitest'
import { IndexDb } from '../../src/store/index-db.js'
import { tmpRoot } from '../support/tmp.js'

async function dbPath(): Promise<string> {
  return join(await tmpRoot('pullcache-index'), 'index.db')
}

describe('index', () => {
  test('migrates a new database to the current schema, in WAL mode, and reopens without migrating again', async () => {
    const path = await dbPath()
    const index = new IndexDb(path)
    expect(index.schemaVersion).toBeGreaterThanOrEqual(1)
    const version = index.schemaVersion
    index.close()
    const raw = new Database(path)
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal')
    raw.close()
    const again = new IndexDb(path)
    expect(again.schemaVersion).toBe(version)
    again.close()
  })

  test('refuses a database from a newer pullcache instead of damaging it', async () => {
    const path = await dbPath()
    const raw = new Database(path)
    raw.pragma('user_version = 999')
    raw.close()
    expect(() => new IndexDb(path)).toThrow(/newer/)
  })

  test('per-request writes are buffered until flush, then land in one go', async () => {
    const path = await dbPath()
    const index = new IndexDb(path)
    const digest = `sha256:${'1'.repeat(64)}`
    index.addBlob(digest, 10, null, 1000)
    for (let i = 0; i < 5; i++) index.touchBlob(digest, 'hit', 10, 2000 + i)
    const request = {
      registry: 'r',
      repo: 'library/a',
      kind: 'blob',
      method: 'GET',
      pullsAvoided: 0,
    } as const
    index.account({ ...request, result: 'hit', bytesCache: 10, bytesUpstream: 0 })
    index.account({ ...request, result: 'hit', bytesCache: 10, bytesUpstream: 0 })
    index.account({ ...request, result: 'miss', bytesCache: 0, bytesUpstream: 10 })
    expect(index.getBlob(digest)?.hits).toBe(0)
    expect(index.accountingTotals()).toEqual([])
    index.flush()
    expect(index.getBlob(digest)).toMatchObject({
      hits: 5,
      bytes_cache: 50,
      last_access: 2004,
      first_cached: 1000,
    })
    const totals = index.accountingTotals()
    expect(totals.find((t) => t.result === 'hit')).toMatchObject({
      requests: 2,
      bytes_cache: 20,
      bytes_upstream: 0,
    })
    expect(totals.find((t) => t.result === 'miss')).toMatchObject({
      requests: 1,
      bytes_cache: 0,
      bytes_upstream: 10,
    })
    index.close()
  })

  test('tags are keyed by registry, so two upstreams never mix', async () => {
    const index = new IndexDb(await dbPath())
    index.setTag('one.example', 'library/a', 'latest', `sha256:${'a'.repeat(64)}`, 'x')
    index.setTag('two.example', 'library/a', 'latest', `sha256:${'b'.repeat(64)}`, 'y')
    expect(index.getTag('one.example', 'library/a', 'latest')?.digest).toBe(`sha256:${'a'.repeat(64)}`)
    expect(index.getTag('two.example', 'library/a', 'latest')?.digest).toBe(`sha256:${'b'.repeat(64)}`)
    index.close()
  })

  test('old accounting hours are pruned in batches, newer ones and other tables stay', async () => {
    const path = await dbPath()
    const index = new IndexDb(path)
    try {
      const hour = 3_600_000
      const now = 1000 * hour
      for (let h = 0; h < 30; h++) {
        for (const repo of ['library/a', 'library/b']) {
          index.account(
            {
              registry: 'r',
              repo,
              kind: 'blob',
              method: 'GET',
              result: 'hit',
              bytesCache: 1,
              bytesUpstream: 0,
              pullsAvoided: 0,
            },
            now - h * hour,
          )
        }
      }
      index.flush()
      const rows = () =>
        index.database.prepare('SELECT hour FROM accounting ORDER BY hour').pluck().all() as number[]
      expect(rows()).toHaveLength(60)
      // One small batch takes only what it is allowed to, oldest first.
      expect(index.pruneAccounting(now - 9.5 * hour, 7)).toBe(7)
      expect(rows()).toHaveLength(53)
      // The loop takes the rest of the hours before the cutoff, and nothing after it.
      expect(await index.pruneAccountingBefore(now - 9.5 * hour, 4)).toBe(40 - 7)
      expect(rows()).toHaveLength(20)
      expect(Math.min(...rows())).toBe(now - 9 * hour)
    } finally {
      index.close()
    }
  })
})
