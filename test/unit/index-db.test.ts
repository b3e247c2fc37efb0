import { renameSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { describe, expect, test } from 'vitest'
import { IndexDb } from '../../src/store/index-db.js'
import { sha256 } from '../support/sha256.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

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

describe('checkpoints in a thread of their own', () => {
  test('the automatic checkpoint is off and a worker thread copies the WAL back into the file', async () => {
    const path = await dbPath()
    const index = new IndexDb(path)
    const failures: string[] = []
    index.checkpointInBackground(20, (m) => failures.push(m))
    expect(index.database.pragma('wal_autocheckpoint', { simple: true })).toBe(0)
    // Nothing written yet, nothing to checkpoint: no thread (its memory is the idle server's).
    await new Promise((r) => setTimeout(r, 100))
    expect(index.checkpointer.running).toBe(false)
    index.database.transaction(() => {
      for (let i = 0; i < 500; i++) index.addBlob(sha256(`blob ${i}`), i, null)
    })()
    await waitFor(() => index.checkpointer.checkpoints > 0, { what: 'a checkpoint by the worker thread' })
    expect(index.checkpointer.running).toBe(true)
    // Everything the WAL held is in the file now: nothing is left for this connection to copy.
    const [left] = index.database.pragma('wal_checkpoint(PASSIVE)') as { log: number; checkpointed: number }[]
    expect(left?.log).toBe(left?.checkpointed)
    await index.stopCheckpoints()
    expect(index.database.pragma('wal_autocheckpoint', { simple: true })).toBe(1000)
    expect(failures).toEqual([])
    index.close()
  })

  test('when the thread fails, the failure is reported and the automatic checkpoint comes back', async () => {
    const path = await dbPath()
    const index = new IndexDb(path)
    // The thread opens the file by name, and finds none.
    renameSync(path, `${path}.moved`)
    const failures: string[] = []
    index.checkpointInBackground(20, (m) => failures.push(m))
    // The thread starts with the first write.
    index.addBlob(sha256('a blob'), 1, null)
    await waitFor(() => failures.length > 0, { what: 'the checkpointer failure' })
    expect(index.database.pragma('wal_autocheckpoint', { simple: true })).toBe(1000)
    index.close()
  })
})
