// Checking the store against itself: every blob file is re-hashed (streamed, a chunk at a time)
// and every stored manifest's bytes too, and the index and the files are compared both ways.
// With `repair`, what is wrong is put right in the only ways that cannot lose good data:
//   - a blob file whose bytes do not hash to its name is renamed into <data_dir>/quarantine/
//     (kept for inspection) and its index row deleted, so the next request fetches it again;
//   - an index row whose file is gone is deleted;
//   - a valid file without a row, or whose row has the wrong size, gets a correct row;
//   - a manifest whose bytes do not hash to its digest is deleted from the index.
// Safe while `pullcache serve` runs on the same store: SQLite is in WAL mode, files are only
// renamed, never rewritten, and every finding is checked again right before it is acted on,
// because the server may have committed, fetched or evicted the same digest meanwhile. tmp/ is
// never touched: it holds the running server's fills.

import { createHash } from 'node:crypto'
import type { Readable } from 'node:stream'
import { sha256 } from '../oci.js'
import { PREFIXES } from './blob-storage.js'
import type { Store } from './store.js'

export type ProblemKind =
  /** A blob file whose bytes do not hash to its name. */
  | 'corrupt_blob'
  /** A valid blob file whose index row records another size. */
  | 'size_mismatch'
  /** An index row whose blob file is gone. */
  | 'missing_file'
  /** A valid blob file that has no index row. */
  | 'orphan_file'
  /** A stored manifest whose bytes do not hash to its digest, or whose size column is wrong. */
  | 'corrupt_manifest'

export interface Problem {
  kind: ProblemKind
  digest: string
  /** Bytes on disk (blobs) or stored (manifests); null when there is no file. */
  size: number | null
  /** The size the index records; null when there is no row. */
  indexSize: number | null
  /** What the bytes actually hash to, for corrupt blobs and manifests. */
  actual: string | null
  /** Whether --repair put it right (always false without repair). */
  repaired: boolean
  /** What was done, or why nothing was: "quarantined to ...", "index row deleted", ... */
  action: string | null
}

export interface VerifyOptions {
  repair: boolean
  /** Start at this prefix directory (two hex digits): resumes a pass that was stopped. */
  fromPrefix?: string | undefined
  /** Stops the pass between two blobs; what was checked (and repaired) stays so. */
  signal?: AbortSignal | undefined
  /** Called after each blob and each prefix, e.g. to draw progress. */
  onProgress?: ((p: VerifyProgress) => void) | undefined
}

export interface VerifyProgress {
  /** The prefix directory being checked, 00..ff. */
  prefix: string
  blobs: number
  bytes: number
  problems: number
}

export interface VerifyReport {
  blobs: { checked: number; bytes: number }
  manifests: { checked: number; bytes: number }
  problems: Problem[]
  repair: boolean
  /** Null when every prefix was checked; else the prefix to resume from (--from). */
  stoppedAt: string | null
}

/** Index rows read per page: memory holds a page and one prefix's file names, never the store. */
const PAGE = 1000

export async function verifyStore(store: Store, opts: VerifyOptions): Promise<VerifyReport> {
  const { blobs, index } = store
  const report: VerifyReport = {
    blobs: { checked: 0, bytes: 0 },
    manifests: { checked: 0, bytes: 0 },
    problems: [],
    repair: opts.repair,
    stoppedAt: null,
  }
  const first = PREFIXES.indexOf(opts.fromPrefix ?? '00')
  if (first < 0) throw new Error(`not a prefix of two hex digits: ${opts.fromPrefix}`)
  const progress = (prefix: string) =>
    opts.onProgress?.({
      prefix,
      blobs: report.blobs.checked,
      bytes: report.blobs.bytes,
      problems: report.problems.length,
    })

  // Prefix by prefix (blobs/sha256/00 .. ff): the files of one prefix, and the index rows of the
  // same digest range, paged. A stop between two prefixes or two blobs loses nothing: every
  // finding was acted on when it was made.
  for (let i = first; i < PREFIXES.length; i++) {
    const prefix = PREFIXES[i]!
    if (opts.signal?.aborted) {
      report.stoppedAt = prefix
      break
    }
    const files = await blobs.list(prefix)
    for (const digest of files) {
      if (opts.signal?.aborted) break
      await checkFile(store, digest, opts, report)
      progress(prefix)
    }
    if (opts.signal?.aborted) {
      report.stoppedAt = prefix
      break
    }
    // Rows of this range whose file the listing did not have.
    const listed = new Set(files)
    const to = `sha256:${PREFIXES[i + 1] ?? 'g'}`
    let cursor = `sha256:${prefix}`
    for (;;) {
      const rows = index.blobPage(cursor, to, PAGE)
      for (const row of rows) {
        if (listed.has(row.digest)) continue
        if ((await blobs.stat(row.digest)) !== undefined) continue // committed after the listing
        const still = index.getBlob(row.digest)
        if (still === undefined) continue // deleted meanwhile (eviction, a server)
        const problem = blobProblem('missing_file', row.digest, null, still.size, null)
        if (opts.repair && store.dropIfMissing(row.digest)) {
          problem.repaired = true
          problem.action = 'index row deleted'
        }
        report.problems.push(problem)
      }
      if (rows.length < PAGE) break
      cursor = `${rows.at(-1)!.digest}\0`
    }
    progress(prefix)
  }
  if (report.stoppedAt !== null) return report

  let after = ''
  for (;;) {
    const digests = index.manifestDigests(after, PAGE)
    for (const digest of digests) {
      const row = index.getManifest(digest)
      if (row === undefined) continue
      report.manifests.checked++
      report.manifests.bytes += row.body.length
      const actual = sha256(row.body)
      if (actual === digest && row.size === row.body.length) continue
      const problem: Problem = {
        kind: 'corrupt_manifest',
        digest,
        size: row.body.length,
        indexSize: row.size,
        actual,
        repaired: false,
        action: null,
      }
      if (opts.repair) {
        index.deleteManifest(digest)
        problem.repaired = true
        problem.action = 'deleted from the index; the next pull fetches it again'
      }
      report.problems.push(problem)
    }
    if (digests.length < PAGE) break
    after = digests.at(-1)!
  }
  return report
}

/** Re-hashes one listed file and compares it with its row (read now: the server may have committed it). */
async function checkFile(
  store: Store,
  digest: string,
  opts: VerifyOptions,
  report: VerifyReport,
): Promise<void> {
  const hashed = await hashBytes(store.blobs.stream(digest))
  // Gone before or while we read it (eviction deletes a file whose reader keeps the bytes):
  // nothing left to judge; a row it left behind is looked at with the other rows.
  const measured = hashed === undefined ? undefined : await store.blobs.stat(digest)
  if (hashed === undefined || measured === undefined) return
  report.blobs.checked++
  report.blobs.bytes += hashed.size
  const indexSize = store.index.getBlob(digest)?.size ?? null
  if (hashed.digest !== digest) {
    const problem = blobProblem('corrupt_blob', digest, hashed.size, indexSize, hashed.digest)
    if (opts.repair) await quarantine(store, problem)
    report.problems.push(problem)
  } else if (indexSize === null) {
    const problem = blobProblem('orphan_file', digest, hashed.size, null, null)
    if (opts.repair) adopt(store, problem, { ...measured, size: hashed.size }, 'adopted: index row added')
    report.problems.push(problem)
  } else if (indexSize !== hashed.size) {
    const problem = blobProblem('size_mismatch', digest, hashed.size, indexSize, null)
    if (opts.repair) {
      adopt(store, problem, { ...measured, size: hashed.size }, `index row corrected to ${hashed.size} bytes`)
    }
    report.problems.push(problem)
  }
}

function blobProblem(
  kind: ProblemKind,
  digest: string,
  size: number | null,
  indexSize: number | null,
  actual: string | null,
): Problem {
  return { kind, digest, size, indexSize, actual, repaired: false, action: null }
}

/** sha256 and size of a stored blob, read in chunks; undefined if the blob is not there. */
async function hashBytes(bytes: Readable): Promise<{ digest: string; size: number } | undefined> {
  const hash = createHash('sha256')
  let size = 0
  try {
    for await (const chunk of bytes) {
      hash.update(chunk as Buffer)
      size += (chunk as Buffer).length
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  return { digest: `sha256:${hash.digest('hex')}`, size }
}

/** Moves a corrupt blob aside and forgets it (Store.quarantine says in which order, and why). */
async function quarantine(store: Store, problem: Problem): Promise<void> {
  const target = await store.quarantine(problem.digest)
  problem.repaired = true
  problem.action = target === undefined ? 'file already gone' : `quarantined to ${target}; index row deleted`
}

/** A file that hashes to its name is good: its row is what must change. */
function adopt(
  store: Store,
  problem: Problem,
  file: { size: number; allocated: number },
  action: string,
): void {
  store.adopt(problem.digest, file)
  problem.repaired = true
  problem.action = action
}
