// One server per store. A starting server empties tmp/ and reconciles the index with blobs/, which
// would wreck the fills of a server already running on the same data dir, so the store is
// claimed for the life of the process by a lock the kernel keeps:
//
//   <data_dir>/pullcache.lock    an empty SQLite database, held EXCLUSIVE by the running server
//
// Node has no fcntl(2), but SQLite's unix VFS locks with POSIX fcntl record locks, and those are
// what a claim needs: the kernel drops them the moment the holder dies (kill -9, OOM kill,
// crash), before it is even reaped, so a zombie, a stale file or a reused pid never blocks a
// start; and they belong to the open file, not to a pid, so two containers sharing the volume,
// both pid 1 in their own pid namespaces, still see each other. SQLite also tracks its locks per
// inode within a process, so a second claim in the same process is refused too.
//
// `locking_mode=EXCLUSIVE` keeps the lock until the connection closes, and `BEGIN EXCLUSIVE`
// takes it at once; the transaction writes nothing, so there is never a journal to recover. A
// busy timeout of 0 makes a second claim fail at once instead of waiting for the first to stop.
//
// POSIX locks have one trap: closing any descriptor of the file drops every lock the process
// holds on it. Nothing but this module opens pullcache.lock, so that never happens.

import { join } from 'node:path'
import Database from 'better-sqlite3'

export const LOCK_FILE = 'pullcache.lock'

/** Thrown when another process (or another claim in this one) holds the store. */
export class StoreLocked extends Error {
  readonly code = 'STORE_LOCKED'
  readonly path: string
  constructor(root: string, path: string, options?: ErrorOptions) {
    super(
      `another pullcache is serving ${root} (it holds the lock on ${path}); stop it first, ` +
        'give this one another data_dir, or point prefetch at the running one with --server',
      options,
    )
    this.name = 'StoreLocked'
    this.path = path
  }
}

// The connections of claims in force. A connection that the garbage collector finalized would
// close and let the lock go, so each is kept reachable here until it is given up.
const held = new Set<Database.Database>()

/**
 * Claims the store under `root` for this process, or throws StoreLocked at once when someone
 * else has it. Returns the function that gives the claim up; the claim also ends, by itself,
 * when the process does.
 */
export function lockStore(root: string): () => void {
  const path = join(root, LOCK_FILE)
  const db = new Database(path, { timeout: 0 })
  try {
    db.pragma('locking_mode = EXCLUSIVE')
    db.exec('BEGIN EXCLUSIVE')
  } catch (err) {
    db.close()
    if ((err as { code?: unknown }).code === 'SQLITE_BUSY') throw new StoreLocked(root, path, { cause: err })
    throw err
  }
  held.add(db)
  return () => {
    if (!held.delete(db)) return
    db.close()
  }
}
