// Making the index and the blob files agree, while the server serves.
//
// A clean stop leaves a mark in the index (IndexDb.markClean, the last write of close()); the
// next start takes it away and, when it was there, trusts the index as it is: nothing is listed
// or stat'ed, whatever the size of the store. After a crash there is no mark, and this pass runs
// in the background:
//
//   for each prefix directory 00..ff of blobs/sha256/:
//     the prefix's file names (streamed with opendir, sorted)   ──┐ merged in digest order,
//     the prefix's index rows (pages of BATCH, in digest order)  ──┘ BATCH entries at a time:
//       file and row      → measure the file; record its bytes on disk; a size other than the
//                           row's means the file is not what its name says: both go
//       file, no row      → adopt: only verified files are ever renamed into blobs/, so this is
//                           a commit whose index write was cut short
//       row, no file      → drop the row; the next request fetches the blob again
//     yield to the event loop after each batch
//
// Memory holds one prefix's names (1/256 of the store) and one batch of rows. Requests do not
// wait for the pass: a row whose file is gone is already a miss (the mirror drops the row and
// fetches again), and a file without a row is adopted by the request that names it.
//
// The server commits and evicts while the pass runs. Every decision is therefore made again in
// the one synchronous step that acts on it, with a fresh look at the row and at the file
// (statNow): a commit renames the file before it writes the row, and eviction deletes the row
// and the file in one step, so neither can fall between the look and the write. What to do
// with each digest is the store's rule (Store.reconcile); this module walks the store.

import type { Logger } from '../log.js'
import { PREFIXES } from './blob-storage.js'
import type { Settled, Store } from './store.js'

/**
 * Entries handled between two yields to the event loop. Each is a row lookup and a stat in the
 * batch's transaction, up to ~0.1 ms on a loaded machine, so a batch holds requests up for a few
 * milliseconds at most (256 was measured at ~15 ms).
 */
const BATCH = 64

export interface ReconcileResult {
  /** Blob files looked at. */
  files: number
  /** Rows whose file was gone, dropped. */
  dropped_rows: number
  /** Files without a row, given one. */
  adopted_files: number
  /** Files whose size was not their row's, removed with their row. */
  removed_files: number
  /** Rows whose bytes on disk were recorded or corrected. */
  measured_rows: number
  /** False when the pass was stopped before it had seen every prefix. */
  completed: boolean
  duration_ms: number
}

export interface ReconcileOptions {
  /** Stops the pass between two batches. */
  signal?: AbortSignal
  /** Called after each prefix directory, e.g. for progress. */
  onPrefix?: (prefix: string, result: ReconcileResult) => void
}

/** One whole pass; see the top of this module. Resolves when done or stopped, never rejects on a stop. */
export async function reconcileStore(store: Store, opts: ReconcileOptions = {}): Promise<ReconcileResult> {
  const { blobs, index } = store
  const started = performance.now()
  const result: ReconcileResult = {
    files: 0,
    dropped_rows: 0,
    adopted_files: 0,
    removed_files: 0,
    measured_rows: 0,
    completed: false,
    duration_ms: 0,
  }
  const act = (batch: Entry[], freeing: Promise<void>[]) =>
    index.transaction(() => {
      for (const entry of batch) count(store.reconcile(entry.digest, freeing), result)
    })
  for (const [i, prefix] of PREFIXES.entries()) {
    if (opts.signal?.aborted) break
    const files = await blobs.list(prefix)
    const from = `sha256:${prefix}`
    // 'g' sorts after every hex digit: the last prefix's range ends past every digest.
    const to = `sha256:${PREFIXES[i + 1] ?? 'g'}`
    let cursor = from
    let f = 0
    for (;;) {
      if (opts.signal?.aborted) break
      const rows = index.blobPage(cursor, to, BATCH)
      const full = rows.length === BATCH
      // This page covers [cursor, end): every row in it, and the files listed in that range.
      const end = full ? `${rows.at(-1)!.digest}\0` : to
      const unlisted = new Set(rows.map((r) => r.digest))
      const entries: Entry[] = []
      while (f < files.length && files[f]! < end) {
        const digest = files[f++]!
        entries.push({ digest, listed: true })
        unlisted.delete(digest)
      }
      for (const digest of unlisted) entries.push({ digest, listed: false })
      for (let b = 0; b < entries.length; b += BATCH) {
        if (opts.signal?.aborted) break
        const batch = entries.slice(b, b + BATCH)
        // Stat'ed off the event loop first: the synchronous second look in Store.reconcile then finds
        // the inodes cached and costs microseconds, even on a cold disk.
        await Promise.all(
          batch.map(async (e) => {
            if (e.listed) await blobs.stat(e.digest)
          }),
        )
        const freeing: Promise<void>[] = []
        act(batch, freeing)
        await Promise.all(freeing)
        result.files += batch.filter((e) => e.listed).length
        await new Promise((resolve) => setImmediate(resolve))
      }
      if (!full) break
      cursor = end
    }
    if (opts.signal?.aborted) break
    opts.onPrefix?.(prefix, result)
    if (i === PREFIXES.length - 1) result.completed = true
  }
  result.duration_ms = Math.round(performance.now() - started)
  return result
}

interface Entry {
  digest: string
  /** Whether the directory listing had the file. */
  listed: boolean
}

function count(settled: Settled, result: ReconcileResult): void {
  if (settled === 'adopted') result.adopted_files++
  else if (settled === 'dropped') result.dropped_rows++
  else if (settled === 'removed') result.removed_files++
  else if (settled === 'measured') result.measured_rows++
}

export interface BackgroundReconcile {
  /** Resolves with the pass's result (completed false when stopped); never rejects. */
  readonly done: Promise<ReconcileResult | undefined>
  /** Whether the pass has finished every prefix. */
  readonly completed: boolean
  /** Asks the pass to stop after the batch in hand and waits for it. */
  stop(): Promise<void>
}

/** Starts a pass that runs while the server serves; logs its start and its outcome. */
export function reconcileInBackground(store: Store, log: Logger): BackgroundReconcile {
  const controller = new AbortController()
  let completed = false
  log.info('store.reconcile_started', { reason: 'the last stop was not clean' })
  const done = reconcileStore(store, { signal: controller.signal }).then(
    (result) => {
      completed = result.completed
      log.info(result.completed ? 'store.reconciled' : 'store.reconcile_stopped', { ...result })
      return result
    },
    (err: unknown) => {
      // The index stays untrusted (no clean mark is written), so the next start tries again.
      log.error('store.reconcile_failed', { error: err })
      return undefined
    },
  )
  return {
    done,
    get completed() {
      return completed
    },
    async stop() {
      controller.abort()
      await done
    },
  }
}
