// Writes a blob body to a Node response from pools of reused buffers. A stream that allocates a
// fresh 512 KiB buffer for every chunk keeps V8's collector busy with major GCs on the warm path
// (the benchmark measured 46% of samples in Mark-Compact); here a buffer goes back to its pool
// only when the socket has taken its bytes (the write callback), so reuse can never overwrite
// bytes still queued.
//
// Memory: a chunk the kernel does not take at once stays queued, whole, until the client reads
// it; a client that stops reading pins it until the send deadline (http/limits.ts) cuts it. So
//  - a response writes its next chunk only once the one before has gone to the kernel entirely
//    (two chunks in flight while the socket keeps up: the disk read overlaps the send),
//  - big chunks (fast) may sit in stalled writes only up to STALLED_BIG_MAX across all
//    responses; past that, chunks are small until stalled writes drain, so 200 clients that
//    stopped reading pin 200 small chunks and a few big ones instead of 200 MiB.

import type { ServerResponse } from 'node:http'
import { BufferPool } from '../buffer-pool.js'
import { STREAM_CHUNK } from '../mirror/blob-fill.js'

/** Where the bytes come from: a positional read that may wait (a fill still downloading). */
export interface ByteSource {
  /** Reads up to `length` bytes at `position` into `buffer`; resolves with the count (> 0). */
  read(buffer: Buffer, length: number, position: number): Promise<number>
  /**
   * Resolves once a read at `position` need not wait long: a response waiting on a slow fill
   * then holds no buffer meanwhile. Optional for sources that never wait.
   */
  ready?(position: number): Promise<void>
}

/** Chunks a response may have queued in the socket at once while the socket keeps up. */
const IN_FLIGHT = 2
/** Chunk size while the client keeps up or few clients lag behind. */
const BIG = STREAM_CHUNK
/** Chunk size once many big chunks wait on clients that do not read. */
const SMALL = 64 * 1024
/** Big chunks that may wait in stalled writes at once, across all responses (16 MiB). */
const STALLED_BIG_MAX = 32

// Kept for reuse across responses; more than this are left to the collector.
const bigPool = new BufferPool(BIG, 16)
const smallPool = new BufferPool(SMALL, 64)
let stalledBig = 0

/** For tests and diagnostics: big chunks now waiting on clients that have not taken them. */
export function stalledBigChunks(): number {
  return stalledBig
}

interface Write {
  big: boolean
  stalled: boolean
  done: boolean
}

/**
 * Sends bytes [start, end] of `source`, then ends the response. On a failure of the source the
 * response is destroyed, never ended: the client sees a cut connection, not a clean short body.
 * `progress` is told every byte count handed to the socket. Returns as soon as the response is
 * closed, whatever it was waiting for.
 */
export async function sendBytes(
  res: ServerResponse,
  source: ByteSource,
  start: number,
  end: number,
  progress: (bytes: number) => void,
): Promise<void> {
  let position = start
  let queued = 0
  let stalled = false
  const pending = new Set<Write>()
  let wake: (() => void) | undefined
  let isClosed = res.destroyed || res.closed || res.socket?.destroyed === true
  const closed = new Promise<void>((resolve) => {
    res.once('close', () => {
      isClosed = true
      resolve()
    })
    if (isClosed) resolve()
  })
  const settle = (w: Write) => {
    if (w.done) return
    w.done = true
    pending.delete(w)
    if (w.stalled && w.big) stalledBig--
  }
  try {
    while (position <= end) {
      while (queued >= IN_FLIGHT || (queued > 0 && stalled)) {
        if (isClosed) return
        await Promise.race([new Promise<void>((resolve) => (wake = resolve)), closed])
      }
      if (isClosed || res.socket?.destroyed) return
      if (source.ready) {
        await Promise.race([source.ready(position), closed])
        if (isClosed) return
      }
      const pool = stalledBig < STALLED_BIG_MAX ? bigPool : smallPool
      const buffer = pool.take()
      let n: number
      try {
        n = await source.read(buffer, Math.min(buffer.length, end - position + 1), position)
      } catch (err) {
        pool.give(buffer)
        throw err
      }
      if (n <= 0) {
        pool.give(buffer)
        throw new Error(`short read at byte ${position}`)
      }
      if (isClosed) {
        pool.give(buffer)
        return
      }
      position += n
      progress(n)
      queued++
      const w: Write = { big: pool === bigPool, stalled: false, done: false }
      pending.add(w)
      res.write(n === buffer.length ? buffer : buffer.subarray(0, n), (err) => {
        if (w.stalled) stalled = false
        settle(w)
        // A failed write may still be referenced by the socket's queue: let it go to the GC.
        // The response is lost then; 'close' follows, but no chunk is read meanwhile.
        if (err) isClosed = true
        else pool.give(buffer)
        queued--
        wake?.()
        wake = undefined
      })
      // Not all taken by the kernel at once: the chunk now waits on the client.
      if (!w.done && res.writableLength > 0) {
        w.stalled = true
        stalled = true
        if (w.big) stalledBig++
      }
    }
    res.end()
  } catch (err) {
    res.destroy(err as Error)
  } finally {
    // A destroyed response never calls back the writes it dropped; count them as gone.
    if (isClosed || res.destroyed) for (const w of [...pending]) settle(w)
  }
}
