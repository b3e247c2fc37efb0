// A fill downloads one blob from upstream into a temp file, hashing as it writes, and commits it
// to the store only when size and sha256 match. It owns the upstream body: clients are
// passengers that read the growing temp file with positional reads (FillReader), so
//  - a client that disconnects does not abort the fill,
//  - a slow client does not slow the fill (the file is the buffer, memory stays flat),
//  - any number of clients, arriving at any time, share one upstream GET, and Range works
//    for them as soon as the bytes they want are on disk.
// A reader never sends the last byte of its range before the fill has verified the blob (size
// and sha256); making it durable and putting it in the store follow, without holding the
// clients. If verification fails, every reader is destroyed mid-body, so no client ever sees
// a clean end of bytes pullcache did not verify. An upstream that declares an empty body for a
// digest that is not the empty blob's fails the fill before anything is answered.

import type { Readable } from 'node:stream'
import { BufferPool } from '../buffer-pool.js'
import { isNetworkError, networkFailure, UpstreamError } from '../errors.js'
import { BlobMismatch, type BlobWriter } from '../store/blob-storage.js'
import type { Store } from '../store/store.js'
import type { BlobBody } from '../upstream/client.js'

/**
 * Blob bodies are read from disk in chunks this big. Chunk size dominates throughput
 * (shared/reference/performance.md: 64 KiB costs a factor of three); measured here, 512 KiB is
 * as fast as 1 MiB for one stream and faster for 32, at half the memory per stream.
 */
export const STREAM_CHUNK = 512 * 1024
/** The digest of zero bytes: the one blob an empty upstream body can be. */
export const EMPTY_DIGEST = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
/**
 * Upstream's chunks are copied into buffers of this size, each written with one write when full.
 * The copy costs less than keeping the chunks: a chunk kept until its batch is written and read
 * by followers outlives V8's young generation, so only major GCs free them, and glibc then hands
 * the freed pages back, to fault in again for the next ones (BENCHMARKS.md, "the cold path").
 */
const WRITE_BATCH = 1024 * 1024
/**
 * Batch buffers kept for the next fills: what one fill holds at most (one filling, one being
 * written, KEPT_BATCHES kept). Fills at once take more and leave them to the collector, so an idle
 * mirror keeps 4 MiB here, not a burst's worth.
 */
const batches = new BufferPool(WRITE_BATCH, 4)
/**
 * Written batches kept in memory for the readers at the download's leading edge: two, because
 * a reader that keeps up waits at the last byte of one batch and then reads across into the next.
 */
const KEPT_BATCHES = 2

/** Upstream bytes on disk from `start`: `bytes`, a view of the pooled batch `buffer`. */
interface KeptBatch {
  start: number
  bytes: Buffer
  buffer: Buffer
}

type State = 'starting' | 'streaming' | 'committed' | 'failed'

type FillRead = (buffer: Buffer, length: number, position: number) => Promise<number>

export interface FillSource {
  /** Resolves with the upstream body once upstream has answered 200; `signal` aborts it. */
  open(signal: AbortSignal): Promise<BlobBody>
  /** Called once the blob is verified and in the store, row included; `allocated` is its bytes on disk. */
  onCommit(size: number, allocated: number): void
  /**
   * Called when the fill has committed or failed, before it lets go of its temp file: the owner
   * stops handing the fill to new readers here, so none can arrive after the file is closed.
   */
  onSettled(): void
}

export class Fill {
  readonly digest: string
  /** The repository (upstream name) the blob is fetched under. */
  readonly repo: string
  state: State = 'starting'
  /** Total size once known: from Content-Length, or at the end for a chunked body. */
  size: number | undefined
  /** Bytes on disk so far; readers may read [0, written). */
  written = 0
  /** Bytes received from upstream so far. */
  received = 0
  /** The bytes on disk are the whole blob, size and sha256 checked: readers may end their ranges. */
  verified = false
  /** Client responses reading this fill right now. */
  readers = 0
  error: Error | undefined
  /** Resolves when upstream has answered and the temp file exists; rejects if it did not. */
  readonly ready: Promise<void>
  /** Settles when the fill has committed (resolves) or failed (rejects). */
  readonly done: Promise<void>
  private writer: BlobWriter | undefined
  private refs = 1 // the fill's own reference to the writer (its temp file)
  private readonly waiters = new Set<() => void>()
  /**
   * The last batches written, oldest first: a reader that keeps up with the download copies its
   * bytes from here instead of reading them back from the temp file (a read on libuv's pool and a
   * promise per chunk). The same bytes as on disk, and only bytes already on disk.
   */
  private kept: KeptBatch[] = []
  private readonly store: Store
  private body: Readable | undefined
  private aborted: Error | undefined
  private readonly controller = new AbortController()
  private running: Promise<void> | undefined

  constructor(digest: string, repo: string, store: Store) {
    this.digest = digest
    this.repo = repo
    this.store = store
    let readyResolve!: () => void
    let readyReject!: (err: Error) => void
    this.ready = new Promise((resolve, reject) => {
      readyResolve = resolve
      readyReject = reject
    })
    let doneResolve!: () => void
    let doneReject!: (err: Error) => void
    this.done = new Promise((resolve, reject) => {
      doneResolve = resolve
      doneReject = reject
    })
    // Callers may only await one of the two; neither rejection is unhandled.
    this.ready.catch(() => {})
    this.done.catch(() => {})
    this.settle = { readyResolve, readyReject, doneResolve, doneReject }
  }

  private readonly settle: {
    readyResolve: () => void
    readyReject: (err: Error) => void
    doneResolve: () => void
    doneReject: (err: Error) => void
  }

  /** Runs the whole fill. Never throws: the outcome is in `state`, `ready` and `done`. */
  run(source: FillSource): Promise<void> {
    this.running = this.download(source)
    return this.running
  }

  private async download(source: FillSource): Promise<void> {
    let upstream: BlobBody | undefined
    try {
      if (this.aborted) throw this.aborted
      upstream = await source.open(this.controller.signal)
      this.body = upstream.body
      // Destroyed before or after the loop below reads it (a refused length, an abort), undici's
      // body emits an error nobody else listens to; the outcome is decided here, not there.
      upstream.body.on('error', () => {})
      if (this.aborted) throw this.aborted
      if (upstream.size === 0 && this.digest !== EMPTY_DIGEST) {
        // Nothing to verify against until the end, and the client would get a clean empty
        // 200 first: refuse it now, before any header goes out.
        throw new UpstreamError('INVALID', `blob ${this.digest}: upstream declared an empty body`)
      }
      this.size = upstream.size
      // The store's verified writer hashes each chunk as it is given (here, as it arrives) and
      // refuses at commit whatever does not match the digest and the declared size.
      const writer = await this.store.write(this.digest, this.size)
      this.writer = writer
      if (this.aborted) throw this.aborted
      this.state = 'streaming'
      this.settle.readyResolve()

      // One write in flight while the next batch fills: the network and the disk overlap, and
      // upstream is paused (backpressure) if the disk falls behind. A batch buffer goes back to
      // the pool only once written and out of `kept`; after a failure none does, as a write
      // may still hold it.
      let writing: Promise<void> = Promise.resolve()
      let batch = batches.take()
      let filled = 0
      const flush = async () => {
        await writing
        const kept = {
          start: this.received - filled,
          bytes: batch.subarray(0, filled),
          buffer: batch,
        }
        writer.write(kept.bytes)
        batch = batches.take()
        filled = 0
        writing = writer.flush().then((written) => {
          if (this.kept.push(kept) > KEPT_BATCHES) batches.give(this.kept.shift()!.buffer)
          this.written = written
          this.wake()
        })
        writing.catch(() => {}) // awaited below; a failure mid-body must not go unhandled meanwhile
      }
      for await (const chunk of upstream.body) {
        const buf = chunk as Buffer
        if (this.size !== undefined && this.received + buf.length > this.size) {
          throw new UpstreamError(
            'INVALID',
            `blob ${this.digest}: upstream sent more than ${this.size} bytes`,
          )
        }
        for (let at = 0; at < buf.length; ) {
          const n = buf.copy(batch, filled, at)
          at += n
          filled += n
          this.received += n
          if (filled === batch.length) await flush()
        }
      }
      if (filled > 0) await flush()
      await writing
      batches.give(batch)

      await writer.verify().catch((err: unknown) => {
        if (!(err instanceof BlobMismatch)) throw err
        const why =
          err.received !== err.expected && err.expected !== undefined
            ? `got ${err.received} of ${err.expected} bytes`
            : `upstream bytes hash to ${err.actual}`
        throw new UpstreamError('INVALID', `blob ${this.digest}: ${why}`, { cause: err })
      })
      // The clients have their last bytes now: fsync, rename and the index row are the store's
      // business, and a client does not wait for them (a 200 MiB fsync is a fifth of a cold GET).
      this.size = this.written
      this.verified = true
      this.wake()
      const { allocated } = await writer.commit()
      this.state = 'committed'
      source.onCommit(this.written, allocated)
      this.settle.doneResolve()
    } catch (err) {
      const error = this.aborted ?? (err instanceof UpstreamError ? err : networkOrDisk(err))
      this.error ??= error
      this.state = 'failed'
      upstream?.body.destroy()
      await this.writer?.abort().catch(() => {})
      this.settle.readyReject(error)
      this.settle.doneReject(error)
    } finally {
      // Readers after the end read the file: the batches' memory goes now, back to the pool
      // once every write is done, as it is from verification on (copyKept reads them
      // synchronously, so no reader holds one).
      if (this.verified) for (const kept of this.kept) batches.give(kept.buffer)
      this.kept = []
      source.onSettled()
      this.wake()
      await this.release()
    }
  }

  /**
   * Stops the download (shutdown, or upstream past its deadline): the fill fails, its temp file
   * goes, readers are cut. A fill still waiting for upstream (or for a download slot) fails at
   * once, so nobody waits on it; `done` settles when the download has let go of everything.
   */
  async abort(reason: Error = new Error('pullcache is shutting down')): Promise<void> {
    this.aborted ??= reason
    if (this.state === 'starting') {
      this.error = this.aborted
      this.state = 'failed'
      this.settle.readyReject(this.aborted)
      this.settle.doneReject(this.aborted)
    }
    this.controller.abort(this.aborted)
    this.body?.destroy(this.aborted)
    this.wake()
    await (this.running ?? this.done).catch(() => {})
  }

  /**
   * A reader for one client of bytes up to `end` (inclusive; the caller says where each read starts), following the fill as it grows.
   * Until the blob is verified it holds back the last byte of the range, so a client never sees
   * a clean end of bytes that may yet prove wrong; if the fill fails, its reads throw (after
   * verification too: a commit that failed cuts the readers still behind).
   * release() must be called once the client is done.
   */
  reader(end: number): { read: FillRead; release: () => void } {
    this.refs++
    this.readers++
    let released = false
    return {
      read: (buffer, length, position) => this.readWhenReady(buffer, length, position, end),
      release: () => {
        if (released) return
        released = true
        this.readers--
        void this.release()
      },
    }
  }

  private async readWhenReady(
    buffer: Buffer,
    length: number,
    position: number,
    end: number,
  ): Promise<number> {
    if (position > end) return 0
    for (;;) {
      if (this.state === 'failed') throw this.error ?? new Error('fill failed')
      const limit = this.verified ? end + 1 : Math.min(this.written - 1, end)
      if (position < limit) {
        const want = Math.min(length, limit - position)
        const copied = this.copyKept(buffer, want, position)
        if (copied > 0) return copied
        const n = await this.read(buffer, want, position)
        if (n <= 0) throw new Error(`short read of ${this.digest} at ${position}`)
        return n
      }
      await this.changed()
    }
  }

  /**
   * Copies up to `length` bytes at `position` from the kept batches into `buffer`; 0 when the
   * reader is behind them (it reads the file then).
   */
  private copyKept(buffer: Buffer, length: number, position: number): number {
    const first = this.kept[0]
    if (first === undefined || position < first.start) return 0
    let copied = 0
    for (const { start, bytes } of this.kept) {
      const from = position + copied - start
      if (from < bytes.length && from >= 0) {
        copied += bytes.copy(buffer, copied, from, Math.min(bytes.length, from + length - copied))
        if (copied === length) return copied
      }
    }
    return copied
  }

  /** Resolves at the next progress or state change. */
  changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.add(resolve))
  }

  read(buffer: Buffer, length: number, position: number): Promise<number> {
    return this.writer!.read(buffer, length, position)
  }

  async release(): Promise<void> {
    if (--this.refs === 0 && this.writer) await this.writer.close().catch(() => {})
  }

  private wake(): void {
    const waiters = [...this.waiters]
    this.waiters.clear()
    for (const w of waiters) w()
  }
}

function networkOrDisk(err: unknown): Error {
  if (isNetworkError(err)) return networkFailure(err, 'upstream body')
  return err instanceof Error ? err : new Error(String(err))
}
