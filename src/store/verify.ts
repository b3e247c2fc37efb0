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
import { createReadStream } from 'node:fs'
import { mkdir, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { sha256 } from '../oci.js'
import type { BlobStore } from './blob-store.js'
import type { IndexDb } from './index-db.js'

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

export interface VerifyReport {
  blobs: { checked: number; bytes: number }
  manifests: { checked: number; bytes: number }
  problems: Problem[]
  repair: boolean
}

export interface VerifyOptions {
  repair: boolean
}

/** Blob files are read this many bytes at a time; memory stays flat whatever the blob size. */
const READ_CHUNK = 1024 * 1024

export async function verifyStore(
  store: BlobStore,
  index: IndexDb,
  opts: VerifyOptions,
): Promise<VerifyReport> {
  const report: VerifyReport = {
    blobs: { checked: 0, bytes: 0 },
    manifests: { checked: 0, bytes: 0 },
    problems: [],
    repair: opts.repair,
  }
  // Rows as they were when we started; a row added later belongs to a commit we will see as a
  // file, or to one made after the walk, which is the server's and not ours to judge.
  const rows = new Map(index.allBlobs().map((r) => [r.digest, r.size]))

  for await (const { digest } of store.list()) {
    const hashed = await hashFile(store.path(digest))
    // Gone before or while we read it (eviction deletes a file whose reader keeps the bytes):
    // nothing left to judge here; a row it left behind is looked at with the other rows below.
    if (hashed === undefined || (await store.size(digest)) === undefined) continue
    rows.delete(digest)
    report.blobs.checked++
    report.blobs.bytes += hashed.size
    // Read the row now, not from the start: the server may have committed this blob meanwhile.
    const indexSize = index.getBlob(digest)?.size ?? null
    if (hashed.digest !== digest) {
      const problem = blobProblem('corrupt_blob', digest, hashed.size, indexSize, hashed.digest)
      if (opts.repair) await quarantine(store, index, problem)
      report.problems.push(problem)
    } else if (indexSize === null) {
      const problem = blobProblem('orphan_file', digest, hashed.size, null, null)
      if (opts.repair) adopt(index, problem, hashed.size, 'adopted: index row added')
      report.problems.push(problem)
    } else if (indexSize !== hashed.size) {
      const problem = blobProblem('size_mismatch', digest, hashed.size, indexSize, null)
      if (opts.repair) adopt(index, problem, hashed.size, `index row corrected to ${hashed.size} bytes`)
      report.problems.push(problem)
    }
  }

  // Rows whose file the walk did not see.
  for (const digest of rows.keys()) {
    const row = index.getBlob(digest)
    if (row === undefined) continue // deleted meanwhile (eviction, a server)
    if ((await store.size(digest)) !== undefined) continue // committed after the walk passed it
    const problem = blobProblem('missing_file', digest, null, row.size, null)
    if (opts.repair) {
      index.deleteBlob(digest)
      problem.repaired = true
      problem.action = 'index row deleted'
    }
    report.problems.push(problem)
  }

  for (const digest of index.manifestDigests()) {
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
  return report
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

/** sha256 and size of a file, read in chunks; undefined if the file is not there. */
export async function hashFile(path: string): Promise<{ digest: string; size: number } | undefined> {
  const hash = createHash('sha256')
  let size = 0
  try {
    for await (const chunk of createReadStream(path, { highWaterMark: READ_CHUNK })) {
      hash.update(chunk as Buffer)
      size += (chunk as Buffer).length
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  return { digest: `sha256:${hash.digest('hex')}`, size }
}

/**
 * Moves a corrupt blob out of blobs/ and forgets it. The file goes first: a request arriving
 * between the two steps finds a row without a file, which the mirror already treats as "fetch it
 * again". If a fetch committed a good copy in that moment, its row is put back.
 */
async function quarantine(store: BlobStore, index: IndexDb, problem: Problem): Promise<void> {
  const dir = join(store.root, 'quarantine')
  await mkdir(dir, { recursive: true })
  // A digest quarantined before keeps its earlier file: the names never collide.
  const target = join(dir, `${problem.digest.slice('sha256:'.length)}.${Date.now()}`)
  try {
    await rename(store.path(problem.digest), target)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    problem.action = 'file already gone'
  }
  index.deleteBlob(problem.digest)
  const refilled = await store.size(problem.digest)
  if (refilled !== undefined) index.addBlob(problem.digest, refilled)
  problem.repaired = true
  problem.action ??= `quarantined to ${target}; index row deleted`
}

/** A file that hashes to its name is good: its row is what must change. */
function adopt(index: IndexDb, problem: Problem, size: number, action: string): void {
  index.addBlob(problem.digest, size)
  problem.repaired = true
  problem.action = action
}
