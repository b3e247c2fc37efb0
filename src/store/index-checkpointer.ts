// WAL checkpoints off the event loop, for the server: a worker thread with a connection of its
// own checkpoints the index every interval, and the server's connection never checkpoints inside
// a commit while the thread runs. The thread (a V8 isolate of its own, about 7 MB of resident
// memory) starts with the server's first write to the index, not with the server: a mirror that
// has not been used yet has nothing to checkpoint.

import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'
import type Database from 'better-sqlite3'

/**
 * The checkpointer thread (see IndexDb.checkpointInBackground): its own connection to the same
 * file, a PASSIVE checkpoint every interval, a message when one copied pages back or failed.
 * PASSIVE never waits for the server's connection: it copies what no reader still needs, and
 * writers go on appending to the WAL meanwhile.
 */
const CHECKPOINTER = `
const { parentPort, workerData } = require('node:worker_threads')
const Database = require(workerData.module)
const db = new Database(workerData.path, { fileMustExist: true })
let last = ''
const timer = setInterval(() => {
  try {
    const [r] = db.pragma('wal_checkpoint(PASSIVE)')
    const seen = r.log + '/' + r.checkpointed
    if (seen !== last && r.checkpointed > 0) parentPort.postMessage({ checkpointed: r.checkpointed })
    last = seen
  } catch (err) {
    parentPort.postMessage({ failed: String((err && err.message) || err) })
  }
}, workerData.intervalMs)
parentPort.on('message', () => {
  clearInterval(timer)
  db.close()
  parentPort.close()
})
`

export class Checkpointer {
  private readonly db: Database.Database
  private readonly path: string
  private checkpointer: Worker | undefined
  /** Until the first write: the timer that looks for it (see start). */
  private watch: NodeJS.Timeout | undefined
  /** Checkpoints the thread has reported, for tests and logs. */
  checkpoints = 0

  constructor(db: Database.Database, path: string) {
    this.db = db
    this.path = path
  }

  /**
   * Moves WAL checkpoints off the event loop, for the server. SQLite's automatic checkpoint runs
   * inside whichever commit makes the WAL cross 1000 pages: that commit then copies those pages
   * into the database file and fsyncs it, tens to hundreds of milliseconds during which no
   * request is answered (an eviction or a reconciliation commits often). Here the automatic
   * checkpoint is off and a worker thread with its own connection checkpoints every
   * `intervalMs` instead. If that thread fails, `onFailure` is told and the automatic
   * checkpoint comes back, so the WAL never grows without bound.
   *
   * The thread itself starts once this connection has written (SQLite's `total_changes()`,
   * looked at every `intervalMs`): before that, the WAL holds at most what was there when the
   * server opened the index (a migration, a crash's leftovers), which readers see as they would
   * after a checkpoint and which the next checkpoint, or the last connection's close, copies back.
   */
  start(intervalMs: number, onFailure: (message: string) => void): void {
    if (this.checkpointer !== undefined || this.watch !== undefined) return
    this.db.pragma('wal_autocheckpoint = 0')
    const changes = this.db.prepare('SELECT total_changes()').pluck()
    const before = changes.get()
    this.watch = setInterval(() => {
      if (!this.db.open) return this.stopWatching()
      if (changes.get() === before) return
      this.stopWatching()
      this.spawn(intervalMs, onFailure)
    }, intervalMs)
    this.watch.unref()
  }

  /** Whether the checkpointer thread runs (it starts with the first write; see start). */
  get running(): boolean {
    return this.checkpointer !== undefined
  }

  private stopWatching(): void {
    clearInterval(this.watch)
    this.watch = undefined
  }

  private spawn(intervalMs: number, onFailure: (message: string) => void): void {
    const worker = new Worker(CHECKPOINTER, {
      eval: true,
      workerData: {
        module: createRequire(import.meta.url).resolve('better-sqlite3'),
        path: this.path,
        intervalMs,
      },
    })
    worker.unref()
    const fallBack = (message: string) => {
      if (this.checkpointer !== worker) return
      this.checkpointer = undefined
      void worker.terminate()
      if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000')
      onFailure(message)
    }
    worker.on('message', (m: { checkpointed?: number; failed?: string }) => {
      if (m.failed !== undefined) fallBack(m.failed)
      else this.checkpoints++
    })
    worker.on('error', (err) => fallBack(err.message))
    worker.on('exit', (code) => {
      if (code !== 0) fallBack(`the checkpointer thread exited with code ${code}`)
    })
    this.checkpointer = worker
  }

  /** Stops the checkpointer thread and waits for it to close its connection. */
  async stop(): Promise<void> {
    if (this.watch !== undefined) {
      this.stopWatching()
      if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000')
    }
    const worker = this.checkpointer
    if (worker === undefined) return
    this.checkpointer = undefined
    const exited = new Promise((resolve) => worker.once('exit', resolve))
    // Unreferenced while it ran, so that it never kept a process alive; waited for now, or a
    // process with nothing else to do would end here, in the middle of its close.
    worker.ref()
    worker.postMessage('stop')
    await exited
    if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000')
  }

  /** Ends a thread still running at once (stop() lets it close cleanly). */
  terminate(): void {
    this.stopWatching()
    if (this.checkpointer !== undefined) {
      void this.checkpointer.terminate()
      this.checkpointer = undefined
    }
  }
}
