// Writes a blob body to a Node response from a small pool of reused buffers. A stream that
// allocates a fresh 512 KiB buffer for every chunk keeps V8's collector busy with major GCs on
// the warm path (the benchmark measured 46% of samples in Mark-Compact); here each response
// keeps at most two chunks in flight, and a buffer goes back to the pool only when the socket
// has taken its bytes (the write callback), so reuse can never overwrite bytes still queued.

import type { ServerResponse } from 'node:http'
import { STREAM_CHUNK } from '../mirror/blob-fill.js'

/** Where the bytes come from: a positional read that may wait (a fill still downloading). */
export interface ByteSource {
  /** Reads up to `length` bytes at `position` into `buffer`; resolves with the count (> 0). */
  read(buffer: Buffer, length: number, position: number): Promise<number>
}

/** Chunks a response may have queued in the socket at once. */
const IN_FLIGHT = 2
/** Buffers kept for reuse across responses; more than this are left to the collector. */
const POOL_MAX = 64
const pool: Buffer[] = []

function take(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafeSlow(STREAM_CHUNK)
}

function give(buffer: Buffer): void {
  if (pool.length < POOL_MAX) pool.push(buffer)
}

/**
 * Sends bytes [start, end] of `source`, then ends the response. On a failure of the source the
 * response is destroyed, never ended: the client sees a cut connection, not a clean short body.
 * `progress` is told every byte count handed to the socket.
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
  let wake: (() => void) | undefined
  const settled = () => {
    queued--
    wake?.()
    wake = undefined
  }
  const closed = new Promise<void>((resolve) => res.once('close', resolve))
  try {
    while (position <= end) {
      if (res.destroyed) return
      while (queued >= IN_FLIGHT) {
        await Promise.race([new Promise<void>((resolve) => (wake = resolve)), closed])
        if (res.destroyed) return
      }
      const buffer = take()
      let n: number
      try {
        n = await source.read(buffer, Math.min(buffer.length, end - position + 1), position)
      } catch (err) {
        give(buffer)
        throw err
      }
      if (n <= 0) {
        give(buffer)
        throw new Error(`short read at byte ${position}`)
      }
      position += n
      progress(n)
      queued++
      res.write(n === buffer.length ? buffer : buffer.subarray(0, n), (err) => {
        // A failed write may still be referenced by the socket's queue: let it go to the GC.
        if (!err) give(buffer)
        settled()
      })
    }
    res.end()
  } catch (err) {
    res.destroy(err as Error)
  }
}
