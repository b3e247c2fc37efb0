// What pullcache needs from wherever blob bytes live. The local disk (store/blob-store.ts) is
// the one implementation today; the shape is kept to what an object store (S3 and the like) can
// also give, so that a second implementation slots in behind store/store.ts without the mirror,
// the HTTP layer or the whole-store passes knowing:
//
//   openBlob  read a committed blob by range (positional reads on a handle; a GET with Range)
//   stream    read a committed blob, or a range of it, as a stream (export, verify)
//   write     a verified writer: hashed and counted as it is given bytes, committed only when
//             sha256 and size match, durable and atomic (rename; a completed multipart upload)
//   stat      size and bytes taken, or undefined when absent (stat; HEAD)
//   list      the digests under one of 256 prefixes, sorted (readdir; ListObjectsV2 by prefix)
//   remove    take a blob out (unlink; DELETE), or move it aside for inspection (quarantine)
//
// Index rows are not this interface's business: store/store.ts owns the rules that keep a row
// and its blob in step, and calls these methods in the order those rules need.

import type { Readable } from 'node:stream'

/** The 256 prefixes (two hex digits) digests are listed by, in order: blobs/sha256/<prefix>/ on disk. */
export const PREFIXES: readonly string[] = Array.from({ length: 256 }, (_, i) =>
  i.toString(16).padStart(2, '0'),
)

/** A committed blob open for reading: positional reads, as many and in any order as wanted. */
export interface BlobHandle {
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>
  close(): Promise<void>
}

export interface BlobStat {
  /** The blob's length in bytes. */
  size: number
  /** What it takes on the medium (st_blocks * 512 on a disk): the figure the budget counts. */
  allocated: number
}

/** A blob's bytes were not what its digest (or the expected size) says; nothing was committed. */
export class BlobMismatch extends Error {
  readonly code = 'BLOB_MISMATCH'
  readonly digest: string
  /** The sha256 of what was written. */
  readonly actual: string
  /** Bytes written. */
  readonly received: number
  /** Bytes expected; undefined when no size was given. */
  readonly expected: number | undefined

  constructor(digest: string, actual: string, received: number, expected: number | undefined) {
    super(
      expected !== undefined && received !== expected
        ? `blob ${digest}: got ${received} of ${expected} bytes`
        : `blob ${digest}: its bytes hash to ${actual}`,
    )
    this.name = 'BlobMismatch'
    this.digest = digest
    this.actual = actual
    this.received = received
    this.expected = expected
  }
}

/**
 * One blob being written. Bytes are given with write() (hashed and counted at once, in order)
 * and go out in batches with flush(); followers of a download read what has gone out with
 * read(). commit() is the only way into the store.
 */
export interface BlobWriter {
  readonly digest: string
  /** Bytes given to write() so far. */
  readonly received: number
  /** Bytes given but not flushed yet. */
  readonly buffered: number
  /** Hashes and counts `chunk` now, and keeps it for the next flush. The chunk is not copied. */
  write(chunk: Buffer): void
  /**
   * Sends what write() was given since the last flush, after the flushes before it; resolves
   * with the bytes written so far once this batch is out.
   */
  flush(): Promise<number>
  /** Reads bytes already flushed, for the clients following a download. */
  read(buffer: Buffer, length: number, position: number): Promise<number>
  /**
   * Flushes, then checks sha256 and size: on a mismatch the partial blob is removed and
   * BlobMismatch thrown. Nothing more may be written after it. Once it resolves, the bytes
   * written are the blob's, though not durable yet nor in the store.
   */
  verify(): Promise<void>
  /**
   * Verifies (unless verify() did already), then makes the bytes durable and puts the blob in
   * place atomically. Reads keep working after a commit, until close().
   */
  commit(): Promise<BlobStat>
  /** Removes the partial blob; nothing once committed. */
  abort(): Promise<void>
  /** Lets go of what the writer holds open; after commit or abort, once reads are over. */
  close(): Promise<void>
}

/** A blob taken out of the store in one synchronous step, whose space is freed later. */
export interface Detached {
  /** Frees the space; may be slow, runs off the event loop. */
  remove(): Promise<void>
}

export interface BlobStorage {
  /** Prepares the store for use without disturbing a server that may be writing to it. */
  prepare(): Promise<void>
  /**
   * Whether the store takes writes now (readiness): a small write and its removal where blobs
   * are written. Resolves with a line for people; rejects with one when it cannot.
   */
  probe(): Promise<string>
  /** A committed blob, open for reads by range, or undefined when absent. */
  openBlob(digest: string): Promise<{ handle: BlobHandle; size: number; allocated: number } | undefined>
  /** A committed blob (or its bytes [start, end], inclusive) as a stream; fails when absent. */
  stream(digest: string, range?: { start: number; end: number }): Readable
  /** A verified writer for `digest`; `size`, when known, is checked at commit too. */
  write(digest: string, size?: number): Promise<BlobWriter>
  stat(digest: string): Promise<BlobStat | undefined>
  /**
   * The same look, synchronously, for a decision that must be taken in the same tick as the
   * index write it leads to (see store/reconcile.ts). An object store answers from its own record
   * of the writes and removals this process made, which are the only ones that can race.
   */
  statNow(digest: string): BlobStat | undefined
  /** The digests under one prefix (two hex digits), sorted. */
  list(prefix: string): Promise<string[]>
  /** Removes a blob; false when it was not there. */
  remove(digest: string): Promise<boolean>
  /**
   * Takes a blob out of reach at once (nobody can open it afterwards), leaving the freeing of
   * its space for later; undefined when it was not there. Throws when it cannot be moved. The
   * disk renames it into tmp/; an object store would mark it gone in memory here (openBlob and
   * statNow then miss it) and DELETE it in remove().
   */
  detach(digest: string): Detached | undefined
  /** Moves a blob aside for inspection; says where, or undefined when it was not there. */
  quarantine(digest: string): Promise<string | undefined>
}
