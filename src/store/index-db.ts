// The SQLite index: what is cached, where it came from, how it is used. All SQL of pullcache
// lives in this module and the index-*.ts modules beside it:
//
//   index-schema.ts        opening a connection; the tables, as their migrations
//   index-statements.ts    the statements IndexDb runs on its rows (this module's methods)
//   index-writes.ts        per-request writes, buffered and flushed in one transaction
//   index-usage.ts         the stats' queries (index.usage)
//   index-listings.ts      kept referrers lists, the catalog's repositories (index.listings)
//   index-eviction.ts      eviction's queries (index.eviction)
//   index-checkpointer.ts  WAL checkpoints in a thread of their own
//
// Reads are synchronous and cheap (better-sqlite3, prepared statements). Writes that record new
// content (a committed blob, a stored manifest, a moved tag) are rare, and go straight to the
// database; the writes every request makes wait in index-writes.ts for the next flush.
//
// Repositories and tags are keyed by (registry, repo): serving a second upstream later needs no
// migration. Blobs and manifests are keyed by digest alone: content is shared across repos.

import type Database from 'better-sqlite3'
import type { ManifestRef } from '../oci.js'
import { Checkpointer } from './index-checkpointer.js'
import { EvictionQueries } from './index-eviction.js'
import { ListingQueries } from './index-listings.js'
import { connect } from './index-schema.js'
import {
  type BlobRow,
  type ManifestRow,
  prepare,
  type RepoAccess,
  type RepoAccessRow,
  type Statements,
  type StoreTotals,
  type TagRow,
} from './index-statements.js'
import { UsageQueries } from './index-usage.js'
import { type Accounted, type CacheResult, WriteBuffer } from './index-writes.js'

export type { ManifestRef } from '../oci.js'
export type {
  BlobRow,
  ManifestRow,
  RepoAccess,
  RepoAccessRow,
  StoreTotals,
  TagRow,
} from './index-statements.js'
export type { Accounted, CacheResult } from './index-writes.js'

export class IndexDb {
  private readonly db: Database.Database
  private readonly stmt: Statements
  private readonly writes: WriteBuffer
  /** WAL checkpoints in a thread (index-checkpointer.ts); tests read its `running`, `checkpoints`. */
  readonly checkpointer: Checkpointer
  /** The queries behind the stats (store/stats.ts). */
  readonly usage: UsageQueries
  /** The kept referrers lists and the catalog's walk over repositories (index-listings.ts). */
  readonly listings: ListingQueries
  /** The queries behind eviction (store/eviction.ts). */
  readonly eviction: EvictionQueries

  /**
   * `readonly` is for commands that only look (stats) while a server may be writing: the file
   * must exist, it is never created or migrated, and the buffered writes must not be used.
   */
  constructor(path: string, opts: { readonly?: boolean } = {}) {
    this.db = connect(path, opts.readonly === true)
    this.stmt = prepare(this.db)
    this.writes = new WriteBuffer(this.db)
    this.checkpointer = new Checkpointer(this.db, path)
    this.usage = new UsageQueries(this.db)
    this.listings = new ListingQueries(this.db)
    this.eviction = new EvictionQueries(this.db)
  }

  get schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number
  }

  // --- blobs -------------------------------------------------------------------------------

  getBlob(digest: string): BlobRow | undefined {
    return this.stmt.getBlob.get(digest) as BlobRow | undefined
  }

  /** `allocated`: bytes the file takes on disk (st_blocks * 512), null when not measured. */
  addBlob(digest: string, size: number, allocated: number | null, now = Date.now()): void {
    this.stmt.addBlob.run(
      digest,
      size,
      allocated,
      this.stmt.refMediaType.pluck().get(digest) ?? null,
      now,
      now,
    )
  }

  deleteBlob(digest: string): void {
    this.stmt.deleteBlob.run(digest)
  }

  /** An evicted blob's row and its repository links; its counters go with it. */
  evictBlob(digest: string): void {
    this.stmt.deleteBlob.run(digest)
    this.stmt.unlinkDigest.run(digest)
  }

  /** Runs `fn` in one transaction: its writes land together, and nothing else runs meanwhile. */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)()
  }

  /** Records what a blob's file takes on disk; no-op when the row is gone. */
  setAllocated(digest: string, allocated: number): void {
    this.stmt.setAllocated.run(allocated, digest, allocated)
  }

  /**
   * Blob count, logical bytes and bytes on disk, for metrics and the budget: one row kept by
   * triggers, never a sum over the blobs.
   */
  storeTotals(): StoreTotals {
    return this.stmt.storeTotals.get() as StoreTotals
  }

  /**
   * Up to `limit` blob rows with digests in [from, to), in digest order: whole-store passes
   * (reconciliation, verify) page through the index with these instead of loading it.
   */
  blobPage(
    from: string,
    to: string,
    limit: number,
  ): { digest: string; size: number; allocated: number | null }[] {
    return this.stmt.blobPage.all(from, to, limit) as ReturnType<IndexDb['blobPage']>
  }

  // --- the clean-shutdown marker -----------------------------------------------------------

  /** Written as the last step of a clean stop: index and files agree. */
  markClean(now = Date.now()): void {
    this.stmt.setState.run('clean_shutdown', String(now))
  }

  /**
   * Whether the last stop was clean; the mark is removed in the same step, so a crash from
   * here on leaves an index that is not trusted next time.
   */
  takeCleanMark(): boolean {
    return this.db.transaction(() => {
      const was = this.stmt.getState.pluck().get('clean_shutdown') !== undefined
      this.stmt.deleteState.run('clean_shutdown')
      return was
    })()
  }

  // --- manifests ---------------------------------------------------------------------------

  getManifest(digest: string): ManifestRow | undefined {
    return this.stmt.getManifest.get(digest) as ManifestRow | undefined
  }

  /** Stores a verified manifest and what it references, in one transaction. */
  addManifest(digest: string, mediaType: string, body: Buffer, refs: ManifestRef[], now = Date.now()): void {
    this.db.transaction(() => {
      this.stmt.addManifest.run(digest, mediaType, body.length, body, now, now)
      for (const ref of refs) {
        this.stmt.addRef.run(digest, ref.child, ref.mediaType, ref.size, ref.platform)
        if (ref.mediaType !== null) this.stmt.setBlobMediaType.run(ref.mediaType, ref.child)
      }
    })()
  }

  manifestRefs(digest: string): ManifestRef[] {
    return this.stmt.refs.all(digest) as ManifestRef[]
  }

  // --- tags --------------------------------------------------------------------------------

  getTag(registry: string, repo: string, tag: string): TagRow | undefined {
    return this.stmt.getTag.get(registry, repo, tag) as TagRow | undefined
  }

  setTag(
    registry: string,
    repo: string,
    tag: string,
    digest: string,
    mediaType: string,
    now = Date.now(),
  ): void {
    this.stmt.setTag.run(registry, repo, tag, digest, mediaType, now)
  }

  deleteTag(registry: string, repo: string, tag: string): void {
    this.stmt.deleteTag.run(registry, repo, tag)
  }

  getTagList(
    registry: string,
    repo: string,
    query: string,
  ): { body: Buffer; link: string | null } | undefined {
    return this.stmt.getTagList.get(registry, repo, query) as
      | { body: Buffer; link: string | null }
      | undefined
  }

  setTagList(registry: string, repo: string, query: string, body: Buffer, link: string | null): void {
    this.stmt.setTagList.run(registry, repo, query, body, link, Date.now())
  }

  // --- whole-store passes (verify, export) ------------------------------------------------

  /** Up to `limit` stored manifests' digests after `after`, in order; bodies via getManifest. */
  manifestDigests(after = '', limit = 1000): string[] {
    return this.stmt.manifestDigests.pluck().all(after, limit) as string[]
  }

  /**
   * Forgets a manifest whose stored bytes are bad, with the references recorded from it. Tags
   * pointing at it stay, as for a tag seen only by HEAD: the next pull fetches it again.
   */
  deleteManifest(digest: string): void {
    this.db.transaction(() => {
      this.stmt.deleteManifestRefs.run(digest)
      this.stmt.deleteManifest.run(digest)
    })()
  }

  /** Every tag recorded for one upstream registry. */
  tagsOf(registry: string): { repo: string; tag: string; digest: string; media_type: string }[] {
    return this.stmt.tagsOf.all(registry) as ReturnType<IndexDb['tagsOf']>
  }

  // --- buffered, per-request writes --------------------------------------------------------

  /** Told of each blob touch too (the bucket's access journal, store/bucket-journal.ts). */
  onBlobTouched: ((digest: string, at: number) => void) | undefined
  touchBlob(digest: string, result: CacheResult, bytesSent: number, now = Date.now()): void {
    this.writes.touchBlob(digest, result, bytesSent, now)
    this.onBlobTouched?.(digest, now)
  }

  touchManifest(digest: string, hit: boolean, now = Date.now()): void {
    this.writes.touchManifest(digest, hit, now)
  }

  touchTag(
    registry: string,
    repo: string,
    tag: string,
    result: CacheResult,
    bytesSent: number,
    pullAvoided: boolean,
    now = Date.now(),
  ): void {
    this.writes.touchTag(registry, repo, tag, result, bytesSent, pullAvoided, now)
  }

  /**
   * Whether the repository has real content here: a tag, or a blob or manifest served under its
   * name (written or still buffered). Two primary-key seeks; the buffer is only walked when
   * both miss, and requests for names that do not exist add nothing to it.
   */
  hasRepo(registry: string, repo: string): boolean {
    if (this.stmt.repoLinked.get(registry, repo) || this.stmt.repoTagged.get(registry, repo)) return true
    for (const l of this.writes.links()) if (l.repo === repo && l.registry === registry) return true
    return false
  }

  link(registry: string, repo: string, digest: string, kind: 'blob' | 'manifest'): void {
    this.writes.link(registry, repo, digest, kind)
  }

  /** Whether upstream confirmed that this repository has the digest (buffered links included). */
  hasLink(registry: string, repo: string, digest: string): boolean {
    if (this.writes.hasLink(registry, repo, digest)) return true
    return this.stmt.hasLink.get(registry, repo, digest) !== undefined
  }

  /**
   * Whether the digest is linked to any repository that anonymous pulls may read; 'assumed'
   * rows count only with `assumed` (see repo_access).
   */
  linkedToPublic(registry: string, digest: string, assumed: boolean): boolean {
    if (this.stmt.linkedToPublic.get(registry, digest, assumed ? 1 : 0) !== undefined) return true
    for (const l of this.writes.links()) {
      if (l.registry !== registry || l.digest !== digest) continue
      const access = this.getRepoAccess(registry, l.repo)?.access
      if (access === 'public' || (assumed && access === 'assumed')) return true
    }
    return false
  }

  /** Whether anything was recorded as fetched under this repository. */
  hasLinks(registry: string, repo: string): boolean {
    if (this.stmt.hasLinks.get(registry, repo) !== undefined) return true
    for (const l of this.writes.links()) if (l.registry === registry && l.repo === repo) return true
    return false
  }

  /** Forgets every 'assumed' answer: with an account, content may no longer be anonymous. */
  forgetAssumed(registry: string): void {
    this.stmt.forgetAssumed.run(registry)
  }

  // --- anonymous access per repository ------------------------------------------------------

  getRepoAccess(registry: string, repo: string): RepoAccessRow | undefined {
    return this.stmt.getRepoAccess.get(registry, repo) as RepoAccessRow | undefined
  }

  setRepoAccess(registry: string, repo: string, access: RepoAccess, now = Date.now()): void {
    this.stmt.setRepoAccess.run(registry, repo, access, now)
  }

  /** Repositories recorded as readable by anonymous pulls ('assumed' ones with `assumed`). */
  /** Whether anonymous pulls may read the repository ('assumed' counts when `assumed`). */
  isPublicRepo(registry: string, repo: string, assumed: boolean): boolean {
    return this.stmt.isPublicRepo.get(registry, repo, assumed ? 1 : 0) !== undefined
  }

  account(entry: Accounted, now = Date.now()): void {
    this.writes.account(entry, now)
  }

  /** Writes everything buffered in one transaction. */
  flush(): void {
    this.writes.flush()
  }

  /**
   * Deletes at most `limit` accounting rows of hours before `before` (ms since epoch) and says
   * how many went: callers loop, yielding between batches, so a large backlog never blocks.
   */
  pruneAccounting(before: number, limit: number): number {
    return this.stmt.pruneAccounting.run(before, limit).changes
  }

  /** Prunes every accounting row before `before`, one small batch per turn of the event loop. */
  async pruneAccountingBefore(before: number, batch = 500): Promise<number> {
    let total = 0
    for (;;) {
      const n = this.pruneAccounting(before, batch)
      total += n
      if (n < batch) return total
      await new Promise((resolve) => setImmediate(resolve))
    }
  }

  /**
   * The connection itself, for tests that look at the tables or at query plans. In src, SQL
   * stays in the index modules (store/index-*.ts): test/unit/sql-owner.test.ts fails otherwise.
   */
  get database(): Database.Database {
    return this.db
  }

  /** Totals per cache result, for tests and (later) the stats command. */
  accountingTotals(): {
    kind: string
    method: string
    result: string
    requests: number
    bytes_cache: number
    bytes_upstream: number
  }[] {
    return this.stmt.totals.all() as ReturnType<IndexDb['accountingTotals']>
  }

  // --- checkpoints (index-checkpointer.ts) --------------------------------------------------

  /** WAL checkpoints off the event loop (a thread, from the first write); see index-checkpointer.ts. */
  checkpointInBackground(intervalMs: number, onFailure: (message: string) => void): void {
    this.checkpointer.start(intervalMs, onFailure)
  }

  /** Stops the checkpointer thread and waits for it to close its connection. */
  stopCheckpoints(): Promise<void> {
    return this.checkpointer.stop()
  }

  /**
   * Closes the connection; as the last one it checkpoints the WAL into the file. A checkpointer
   * still running is terminated (stopCheckpoints first lets it close cleanly).
   */
  close(): void {
    this.flush()
    this.checkpointer.terminate()
    this.db.close()
  }
}
