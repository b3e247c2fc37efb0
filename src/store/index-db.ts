// The SQLite index: what is cached, where it came from, how it is used. All SQL of pullcache
// lives in this module and the index-*.ts modules beside it. Reads are synchronous and cheap (better-sqlite3, prepared statements);
// writes that happen on every request (hit counters, last access, accounting) are buffered in
// memory and flushed in one transaction every flush interval, so the hot path never waits on
// a disk write. Writes that record new content (a committed blob, a stored manifest, a moved
// tag) are rare, and go straight to the database.
//
// Repositories and tags are keyed by (registry, repo): serving a second upstream later needs no
// migration. Blobs and manifests are keyed by digest alone: content is shared across repos.

import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'
import Database from 'better-sqlite3'
import type { ManifestRef } from '../oci.js'
import { EvictionQueries } from './index-eviction.js'
import { UsageQueries } from './index-usage.js'

/** Each entry migrates the schema from version i to i + 1. Never edit one that has shipped. */
const MIGRATIONS: string[] = [
  `
  CREATE TABLE blobs (
    digest       TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    media_type   TEXT,
    first_cached INTEGER NOT NULL,   -- ms since epoch
    last_access  INTEGER NOT NULL,
    hits         INTEGER NOT NULL DEFAULT 0,  -- served from the store
    coalesced    INTEGER NOT NULL DEFAULT 0,  -- served from another request's download
    misses       INTEGER NOT NULL DEFAULT 0,  -- served while downloading it for this request
    bytes_cache    INTEGER NOT NULL DEFAULT 0,
    bytes_upstream INTEGER NOT NULL DEFAULT 0
  ) WITHOUT ROWID;
  CREATE INDEX blobs_last_access ON blobs (last_access);

  -- Manifests are small; their exact bytes live here, so a manifest and its row can never
  -- disagree.
  CREATE TABLE manifests (
    digest       TEXT PRIMARY KEY,
    media_type   TEXT NOT NULL,
    size         INTEGER NOT NULL,
    body         BLOB NOT NULL,
    first_cached INTEGER NOT NULL,
    last_access  INTEGER NOT NULL,
    hits         INTEGER NOT NULL DEFAULT 0
  ) WITHOUT ROWID;
  CREATE INDEX manifests_last_access ON manifests (last_access);

  -- What each manifest references (config, layers, or child manifests of an index), so that
  -- eviction and pins can follow an image from its tag down to its blobs.
  CREATE TABLE manifest_refs (
    manifest   TEXT NOT NULL,
    child      TEXT NOT NULL,
    media_type TEXT,
    size       INTEGER,
    platform   TEXT,
    PRIMARY KEY (manifest, child)
  );                                 -- rowid kept: it remembers the order of an index's entries
  CREATE INDEX manifest_refs_child ON manifest_refs (child);

  CREATE TABLE tags (
    registry     TEXT NOT NULL,
    repo         TEXT NOT NULL,
    tag          TEXT NOT NULL,
    digest       TEXT NOT NULL,
    media_type   TEXT NOT NULL,
    last_checked INTEGER NOT NULL,
    PRIMARY KEY (registry, repo, tag)
  ) WITHOUT ROWID;
  CREATE INDEX tags_digest ON tags (digest);

  -- Requests by tag, kept apart from tags so that a tag deleted upstream keeps its history.
  CREATE TABLE tag_stats (
    registry       TEXT NOT NULL,
    repo           TEXT NOT NULL,
    tag            TEXT NOT NULL,
    requests       INTEGER NOT NULL DEFAULT 0,
    hits           INTEGER NOT NULL DEFAULT 0,
    misses         INTEGER NOT NULL DEFAULT 0,
    stale          INTEGER NOT NULL DEFAULT 0,
    errors         INTEGER NOT NULL DEFAULT 0,
    pulls_avoided  INTEGER NOT NULL DEFAULT 0,
    bytes_cache    INTEGER NOT NULL DEFAULT 0,
    bytes_upstream INTEGER NOT NULL DEFAULT 0,
    last_request   INTEGER NOT NULL,
    PRIMARY KEY (registry, repo, tag)
  ) WITHOUT ROWID;

  CREATE TABLE repo_links (
    registry TEXT NOT NULL,
    repo     TEXT NOT NULL,
    digest   TEXT NOT NULL,
    kind     TEXT NOT NULL,          -- 'blob' | 'manifest'
    PRIMARY KEY (registry, repo, digest)
  ) WITHOUT ROWID;
  CREATE INDEX repo_links_digest ON repo_links (digest);

  -- The last upstream answer to each tags/list query, served when upstream is down.
  CREATE TABLE tag_lists (
    registry   TEXT NOT NULL,
    repo       TEXT NOT NULL,
    query      TEXT NOT NULL,
    body       BLOB NOT NULL,
    link       TEXT,
    fetched_at INTEGER NOT NULL,
    PRIMARY KEY (registry, repo, query)
  ) WITHOUT ROWID;

  -- Per-request accounting, summed per hour: the raw material for hit rates.
  CREATE TABLE accounting (
    hour           INTEGER NOT NULL, -- ms since epoch, floored to the hour
    registry       TEXT NOT NULL,
    repo           TEXT NOT NULL,
    kind           TEXT NOT NULL,    -- 'blob' | 'manifest' | 'tags'
    method         TEXT NOT NULL,
    result         TEXT NOT NULL,    -- 'hit' | 'miss' | 'coalesced' | 'stale' | 'error'
    requests       INTEGER NOT NULL,
    bytes_cache    INTEGER NOT NULL,
    bytes_upstream INTEGER NOT NULL,
    pulls_avoided  INTEGER NOT NULL, -- manifest GETs that did not become a GET upstream
    PRIMARY KEY (hour, registry, repo, kind, method, result)
  ) WITHOUT ROWID;
  `,
  `
  -- Whether anonymous pulls upstream may read a repository, as last learned from upstream.
  -- 'assumed' is written with no upstream account configured: everything then came from
  -- anonymous pulls, so the repository counts as public until an account makes it worth a check.
  -- Kept in the index so that what was private stays private across restarts and after the
  -- account is removed. repo_links (above) says which digests upstream confirmed per repository.
  CREATE TABLE repo_access (
    registry   TEXT NOT NULL,
    repo       TEXT NOT NULL,
    access     TEXT NOT NULL,        -- 'public' | 'private' | 'assumed'
    checked_at INTEGER NOT NULL,     -- ms since epoch
    PRIMARY KEY (registry, repo)
  ) WITHOUT ROWID;
  `,
  `
  -- What each blob takes on disk (st_blocks * 512): on ext4 a 1-byte blob takes 4096, and a
  -- store of small blobs fills its disk long before its logical size says so. NULL until the
  -- file is measured (rows from before this column; the background reconciliation fills them);
  -- until then the logical size stands in for it.
  ALTER TABLE blobs ADD COLUMN allocated INTEGER;

  -- Running totals, kept by triggers on every insert, delete and resize, so that the budget,
  -- stats and metrics read one row instead of summing a million.
  CREATE TABLE store_totals (
    id        INTEGER PRIMARY KEY CHECK (id = 0),
    blobs     INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,      -- logical: sum of blob sizes
    allocated INTEGER NOT NULL,      -- on disk: sum of coalesce(allocated, size)
    manifests INTEGER NOT NULL,
    tags      INTEGER NOT NULL
  );
  INSERT INTO store_totals (id, blobs, bytes, allocated, manifests, tags)
    SELECT 0, count(*), coalesce(sum(size), 0), coalesce(sum(size), 0),
      (SELECT count(*) FROM manifests), (SELECT count(*) FROM tags) FROM blobs;
  CREATE TRIGGER blobs_totals_insert AFTER INSERT ON blobs BEGIN
    UPDATE store_totals SET blobs = blobs + 1, bytes = bytes + new.size,
      allocated = allocated + coalesce(new.allocated, new.size);
  END;
  CREATE TRIGGER blobs_totals_delete AFTER DELETE ON blobs BEGIN
    UPDATE store_totals SET blobs = blobs - 1, bytes = bytes - old.size,
      allocated = allocated - coalesce(old.allocated, old.size);
  END;
  CREATE TRIGGER blobs_totals_update AFTER UPDATE OF size, allocated ON blobs BEGIN
    UPDATE store_totals SET bytes = bytes - old.size + new.size,
      allocated = allocated - coalesce(old.allocated, old.size) + coalesce(new.allocated, new.size);
  END;
  CREATE TRIGGER manifests_totals_insert AFTER INSERT ON manifests BEGIN
    UPDATE store_totals SET manifests = manifests + 1;
  END;
  CREATE TRIGGER manifests_totals_delete AFTER DELETE ON manifests BEGIN
    UPDATE store_totals SET manifests = manifests - 1;
  END;
  CREATE TRIGGER tags_totals_insert AFTER INSERT ON tags BEGIN
    UPDATE store_totals SET tags = tags + 1;
  END;
  CREATE TRIGGER tags_totals_delete AFTER DELETE ON tags BEGIN
    UPDATE store_totals SET tags = tags - 1;
  END;

  -- Small facts about the store as a whole; 'clean_shutdown' is written by the last step of a
  -- clean stop and taken away at start: while it is there, index and files agree.
  CREATE TABLE store_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;

  -- The top-tags query walks this index and stops after N rows instead of sorting every tag.
  CREATE INDEX tag_stats_requests ON tag_stats (requests DESC, last_request DESC);
  `,
]

/** Pages of the SQLite cache; negative means KiB. Bounds the index's memory at any store size. */
const CACHE_KIB = 8192

export interface BlobRow {
  digest: string
  size: number
  /** Bytes on disk (st_blocks * 512); null until measured. */
  allocated: number | null
  media_type: string | null
  first_cached: number
  last_access: number
  hits: number
}

export interface ManifestRow {
  digest: string
  media_type: string
  size: number
  body: Buffer
}

export interface TagRow {
  digest: string
  media_type: string
  last_checked: number
}

export type { ManifestRef } from '../oci.js'

export type RepoAccess = 'public' | 'private' | 'assumed'

export interface RepoAccessRow {
  access: RepoAccess
  checked_at: number
}

export interface StoreTotals {
  blobs: number
  /** Sum of blob sizes. */
  bytes: number
  /** What the blob files take on disk; logical size for blobs not measured yet. */
  allocated: number
  manifests: number
  tags: number
}

export type CacheResult = 'hit' | 'miss' | 'coalesced' | 'stale' | 'error'

export interface Accounted {
  registry: string
  repo: string
  kind: 'blob' | 'manifest' | 'tags'
  method: string
  result: CacheResult
  bytesCache: number
  bytesUpstream: number
  pullsAvoided: number
}

interface BlobUse {
  hits: number
  coalesced: number
  misses: number
  bytesCache: number
  bytesUpstream: number
  at: number
}

interface TagUse {
  registry: string
  repo: string
  tag: string
  requests: number
  hits: number
  misses: number
  stale: number
  errors: number
  pullsAvoided: number
  bytesCache: number
  bytesUpstream: number
  at: number
}

interface Pending {
  blobs: Map<string, BlobUse>
  manifests: Map<string, { hits: number; at: number }>
  tags: Map<string, TagUse>
  links: Map<string, { registry: string; repo: string; digest: string; kind: 'blob' | 'manifest' }>
  accounting: Map<string, Accounted & { hour: number; requests: number }>
}

const HOUR = 3_600_000

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

export class IndexDb {
  private readonly db: Database.Database
  private pending: Pending = emptyPending()
  private readonly stmt: ReturnType<typeof prepare>
  private readonly path: string
  private checkpointer: Worker | undefined
  /** Checkpoints the checkpointer thread has reported, for tests and logs. */
  checkpoints = 0
  /** The queries behind the stats (store/stats.ts). */
  readonly usage: UsageQueries
  /** The queries behind eviction (store/eviction.ts). */
  readonly eviction: EvictionQueries

  /**
   * `readonly` is for commands that only look (stats) while a server may be writing: the file
   * must exist, it is never created or migrated, and the buffered writes must not be used.
   */
  constructor(path: string, opts: { readonly?: boolean } = {}) {
    this.path = path
    if (opts.readonly) {
      this.db = new Database(path, { readonly: true, fileMustExist: true })
      this.db.pragma('busy_timeout = 5000')
      this.db.pragma(`cache_size = -${CACHE_KIB}`)
      checkVersion(this.db)
    } else {
      this.db = new Database(path)
      // WAL lets readers go on while a flush writes; NORMAL sync is durable across process crashes
      // and the store can always be reconciled from the files after a power loss.
      this.db.pragma('journal_mode = WAL')
      this.db.pragma('synchronous = NORMAL')
      this.db.pragma('busy_timeout = 5000')
      // The page cache is the index's only memory that could grow with the store: keep it fixed,
      // and keep the file out of the address space (no mmap), so RSS does not follow the index.
      this.db.pragma(`cache_size = -${CACHE_KIB}`)
      this.db.pragma('mmap_size = 0')
      migrate(this.db)
    }
    this.stmt = prepare(this.db)
    this.usage = new UsageQueries(this.db)
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

  touchBlob(digest: string, result: CacheResult, bytesSent: number, now = Date.now()): void {
    let use = this.pending.blobs.get(digest)
    if (!use) {
      use = { hits: 0, coalesced: 0, misses: 0, bytesCache: 0, bytesUpstream: 0, at: now }
      this.pending.blobs.set(digest, use)
    }
    if (result === 'hit') use.hits++
    else if (result === 'coalesced') use.coalesced++
    else if (result === 'miss') use.misses++
    if (result === 'miss') use.bytesUpstream += bytesSent
    else use.bytesCache += bytesSent
    use.at = Math.max(use.at, now)
  }

  touchManifest(digest: string, hit: boolean, now = Date.now()): void {
    const use = this.pending.manifests.get(digest)
    if (use) {
      use.hits += hit ? 1 : 0
      use.at = Math.max(use.at, now)
    } else {
      this.pending.manifests.set(digest, { hits: hit ? 1 : 0, at: now })
    }
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
    const key = `${registry}\0${repo}\0${tag}`
    let use = this.pending.tags.get(key)
    if (!use) {
      use = {
        registry,
        repo,
        tag,
        requests: 0,
        hits: 0,
        misses: 0,
        stale: 0,
        errors: 0,
        pullsAvoided: 0,
        bytesCache: 0,
        bytesUpstream: 0,
        at: now,
      }
      this.pending.tags.set(key, use)
    }
    use.requests++
    if (result === 'hit' || result === 'coalesced') use.hits++
    else if (result === 'miss') use.misses++
    else if (result === 'stale') use.stale++
    else use.errors++
    if (pullAvoided) use.pullsAvoided++
    if (result === 'miss') use.bytesUpstream += bytesSent
    else use.bytesCache += bytesSent
    use.at = Math.max(use.at, now)
  }

  /**
   * Whether the repository has real content here: a tag, or a blob or manifest served under its
   * name (written or still buffered). Two primary-key seeks; the buffer is only walked when
   * both miss, and requests for names that do not exist add nothing to it.
   */
  hasRepo(registry: string, repo: string): boolean {
    if (this.stmt.repoLinked.get(registry, repo) || this.stmt.repoTagged.get(registry, repo)) return true
    for (const l of this.pending.links.values()) if (l.repo === repo && l.registry === registry) return true
    return false
  }

  link(registry: string, repo: string, digest: string, kind: 'blob' | 'manifest'): void {
    this.pending.links.set(`${registry}\0${repo}\0${digest}`, { registry, repo, digest, kind })
  }

  /** Whether upstream confirmed that this repository has the digest (buffered links included). */
  hasLink(registry: string, repo: string, digest: string): boolean {
    if (this.pending.links.has(`${registry}\0${repo}\0${digest}`)) return true
    return this.stmt.hasLink.get(registry, repo, digest) !== undefined
  }

  /**
   * Whether the digest is linked to any repository that anonymous pulls may read; 'assumed'
   * rows count only with `assumed` (see repo_access).
   */
  linkedToPublic(registry: string, digest: string, assumed: boolean): boolean {
    if (this.stmt.linkedToPublic.get(registry, digest, assumed ? 1 : 0) !== undefined) return true
    for (const l of this.pending.links.values()) {
      if (l.registry !== registry || l.digest !== digest) continue
      const access = this.getRepoAccess(registry, l.repo)?.access
      if (access === 'public' || (assumed && access === 'assumed')) return true
    }
    return false
  }

  /** Whether anything was recorded as fetched under this repository. */
  hasLinks(registry: string, repo: string): boolean {
    if (this.stmt.hasLinks.get(registry, repo) !== undefined) return true
    for (const l of this.pending.links.values()) if (l.registry === registry && l.repo === repo) return true
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
  publicRepos(registry: string, assumed: boolean): Set<string> {
    return new Set(this.stmt.publicRepos.pluck().all(registry, assumed ? 1 : 0) as string[])
  }

  account(entry: Accounted, now = Date.now()): void {
    const hour = now - (now % HOUR)
    const key = [hour, entry.registry, entry.repo, entry.kind, entry.method, entry.result].join('\0')
    const row = this.pending.accounting.get(key)
    if (row) {
      row.requests += 1
      row.bytesCache += entry.bytesCache
      row.bytesUpstream += entry.bytesUpstream
      row.pullsAvoided += entry.pullsAvoided
    } else {
      this.pending.accounting.set(key, { ...entry, hour, requests: 1 })
    }
  }

  /** Writes everything buffered in one transaction. */
  flush(): void {
    const batch = this.pending
    if (
      batch.blobs.size + batch.manifests.size + batch.tags.size + batch.links.size + batch.accounting.size ===
      0
    ) {
      return
    }
    this.pending = emptyPending()
    this.db.transaction(() => {
      for (const [digest, u] of batch.blobs) {
        this.stmt.touchBlob.run(u.hits, u.coalesced, u.misses, u.bytesCache, u.bytesUpstream, u.at, digest)
      }
      for (const [digest, t] of batch.manifests) this.stmt.touchManifest.run(t.hits, t.at, digest)
      for (const t of batch.tags.values()) {
        this.stmt.touchTag.run(
          t.registry,
          t.repo,
          t.tag,
          t.requests,
          t.hits,
          t.misses,
          t.stale,
          t.errors,
          t.pullsAvoided,
          t.bytesCache,
          t.bytesUpstream,
          t.at,
        )
      }
      for (const l of batch.links.values()) this.stmt.link.run(l.registry, l.repo, l.digest, l.kind)
      for (const a of batch.accounting.values()) {
        this.stmt.account.run(
          a.hour,
          a.registry,
          a.repo,
          a.kind,
          a.method,
          a.result,
          a.requests,
          a.bytesCache,
          a.bytesUpstream,
          a.pullsAvoided,
        )
      }
    })()
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

  // --- checkpoints ---------------------------------------------------------------------------

  /**
   * Moves WAL checkpoints off the event loop, for the server. SQLite's automatic checkpoint runs
   * inside whichever commit makes the WAL cross 1000 pages: that commit then copies those pages
   * into the database file and fsyncs it, tens to hundreds of milliseconds during which no
   * request is answered (an eviction or a reconciliation commits often). Here the automatic
   * checkpoint is off and a worker thread with its own connection checkpoints every
   * `intervalMs` instead. If that thread fails, `onFailure` is told and the automatic
   * checkpoint comes back, so the WAL never grows without bound.
   */
  checkpointInBackground(intervalMs: number, onFailure: (message: string) => void): void {
    if (this.checkpointer !== undefined) return
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
    this.db.pragma('wal_autocheckpoint = 0')
  }

  /** Stops the checkpointer thread and waits for it to close its connection. */
  async stopCheckpoints(): Promise<void> {
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

  /**
   * Closes the connection; as the last one it checkpoints the WAL into the file. A checkpointer
   * still running is terminated (stopCheckpoints first lets it close cleanly).
   */
  close(): void {
    this.flush()
    if (this.checkpointer !== undefined) {
      void this.checkpointer.terminate()
      this.checkpointer = undefined
    }
    this.db.close()
  }
}

function emptyPending(): Pending {
  return { blobs: new Map(), manifests: new Map(), tags: new Map(), links: new Map(), accounting: new Map() }
}

/** A read-only connection cannot migrate, so it only accepts the schema this pullcache writes. */
function checkVersion(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number
  if (current !== MIGRATIONS.length) {
    throw new Error(
      current > MIGRATIONS.length
        ? `index schema version ${current} is newer than this pullcache knows (${MIGRATIONS.length})`
        : `index schema version ${current} is older than this pullcache's (${MIGRATIONS.length}); start pullcache serve once to migrate it`,
    )
  }
}

function migrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number
  if (current > MIGRATIONS.length) {
    throw new Error(
      `index schema version ${current} is newer than this pullcache knows (${MIGRATIONS.length})`,
    )
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!)
      db.pragma(`user_version = ${v + 1}`)
    })()
  }
}

function prepare(db: Database.Database) {
  return {
    getBlob: db.prepare('SELECT * FROM blobs WHERE digest = ?'),
    addBlob: db.prepare(
      `INSERT INTO blobs (digest, size, allocated, media_type, first_cached, last_access) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (digest) DO UPDATE SET size = excluded.size,
         allocated = coalesce(excluded.allocated, allocated), last_access = excluded.last_access`,
    ),
    deleteBlob: db.prepare('DELETE FROM blobs WHERE digest = ?'),
    unlinkDigest: db.prepare('DELETE FROM repo_links WHERE digest = ?'),
    setAllocated: db.prepare('UPDATE blobs SET allocated = ? WHERE digest = ? AND allocated IS NOT ?'),
    blobPage: db.prepare(
      'SELECT digest, size, allocated FROM blobs WHERE digest >= ? AND digest < ? ORDER BY digest LIMIT ?',
    ),
    storeTotals: db.prepare('SELECT blobs, bytes, allocated, manifests, tags FROM store_totals'),
    getState: db.prepare('SELECT value FROM store_state WHERE key = ?'),
    setState: db.prepare(
      'INSERT INTO store_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
    ),
    deleteState: db.prepare('DELETE FROM store_state WHERE key = ?'),
    refMediaType: db.prepare(
      'SELECT media_type FROM manifest_refs WHERE child = ? AND media_type IS NOT NULL LIMIT 1',
    ),
    setBlobMediaType: db.prepare('UPDATE blobs SET media_type = ? WHERE digest = ? AND media_type IS NULL'),
    touchBlob: db.prepare(
      `UPDATE blobs SET hits = hits + ?, coalesced = coalesced + ?, misses = misses + ?,
         bytes_cache = bytes_cache + ?, bytes_upstream = bytes_upstream + ?, last_access = max(last_access, ?)
       WHERE digest = ?`,
    ),
    touchTag: db.prepare(
      `INSERT INTO tag_stats (registry, repo, tag, requests, hits, misses, stale, errors, pulls_avoided,
         bytes_cache, bytes_upstream, last_request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (registry, repo, tag) DO UPDATE SET requests = requests + excluded.requests,
         hits = hits + excluded.hits, misses = misses + excluded.misses, stale = stale + excluded.stale,
         errors = errors + excluded.errors, pulls_avoided = pulls_avoided + excluded.pulls_avoided,
         bytes_cache = bytes_cache + excluded.bytes_cache, bytes_upstream = bytes_upstream + excluded.bytes_upstream,
         last_request = max(last_request, excluded.last_request)`,
    ),
    getManifest: db.prepare('SELECT digest, media_type, size, body FROM manifests WHERE digest = ?'),
    addManifest: db.prepare(
      `INSERT INTO manifests (digest, media_type, size, body, first_cached, last_access) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (digest) DO NOTHING`,
    ),
    addRef: db.prepare(
      `INSERT INTO manifest_refs (manifest, child, media_type, size, platform) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT DO NOTHING`,
    ),
    refs: db.prepare(
      'SELECT child, media_type AS mediaType, size, platform FROM manifest_refs WHERE manifest = ? ORDER BY rowid',
    ),
    touchManifest: db.prepare(
      'UPDATE manifests SET hits = hits + ?, last_access = max(last_access, ?) WHERE digest = ?',
    ),
    getTag: db.prepare(
      'SELECT digest, media_type, last_checked FROM tags WHERE registry = ? AND repo = ? AND tag = ?',
    ),
    setTag: db.prepare(
      `INSERT INTO tags (registry, repo, tag, digest, media_type, last_checked) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (registry, repo, tag) DO UPDATE SET digest = excluded.digest,
         media_type = excluded.media_type, last_checked = excluded.last_checked`,
    ),
    deleteTag: db.prepare('DELETE FROM tags WHERE registry = ? AND repo = ? AND tag = ?'),
    getTagList: db.prepare('SELECT body, link FROM tag_lists WHERE registry = ? AND repo = ? AND query = ?'),
    setTagList: db.prepare(
      `INSERT INTO tag_lists (registry, repo, query, body, link, fetched_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (registry, repo, query) DO UPDATE SET body = excluded.body, link = excluded.link,
         fetched_at = excluded.fetched_at`,
    ),
    repoLinked: db.prepare('SELECT 1 FROM repo_links WHERE registry = ? AND repo = ? LIMIT 1'),
    repoTagged: db.prepare('SELECT 1 FROM tags WHERE registry = ? AND repo = ? LIMIT 1'),
    link: db.prepare(
      'INSERT INTO repo_links (registry, repo, digest, kind) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING',
    ),
    hasLink: db.prepare('SELECT 1 FROM repo_links WHERE registry = ? AND repo = ? AND digest = ?'),
    linkedToPublic: db.prepare(
      `SELECT 1 FROM repo_links l JOIN repo_access a ON a.registry = l.registry AND a.repo = l.repo
       WHERE l.registry = ? AND l.digest = ? AND (a.access = 'public' OR (a.access = 'assumed' AND ?)) LIMIT 1`,
    ),
    hasLinks: db.prepare('SELECT 1 FROM repo_links WHERE registry = ? AND repo = ? LIMIT 1'),
    forgetAssumed: db.prepare(`DELETE FROM repo_access WHERE registry = ? AND access = 'assumed'`),
    getRepoAccess: db.prepare('SELECT access, checked_at FROM repo_access WHERE registry = ? AND repo = ?'),
    setRepoAccess: db.prepare(
      `INSERT INTO repo_access (registry, repo, access, checked_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (registry, repo) DO UPDATE SET access = excluded.access, checked_at = excluded.checked_at`,
    ),
    publicRepos: db.prepare(
      `SELECT repo FROM repo_access WHERE registry = ? AND (access = 'public' OR (access = 'assumed' AND ?))`,
    ),
    account: db.prepare(
      `INSERT INTO accounting (hour, registry, repo, kind, method, result, requests, bytes_cache, bytes_upstream,
         pulls_avoided) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (hour, registry, repo, kind, method, result) DO UPDATE SET
         requests = requests + excluded.requests,
         bytes_cache = bytes_cache + excluded.bytes_cache,
         bytes_upstream = bytes_upstream + excluded.bytes_upstream,
         pulls_avoided = pulls_avoided + excluded.pulls_avoided`,
    ),
    // The primary key leads with hour: the inner SELECT walks it from the oldest row and stops.
    pruneAccounting: db.prepare(
      `DELETE FROM accounting WHERE (hour, registry, repo, kind, method, result) IN (
         SELECT hour, registry, repo, kind, method, result FROM accounting WHERE hour < ? LIMIT ?)`,
    ),
    manifestDigests: db.prepare('SELECT digest FROM manifests WHERE digest > ? ORDER BY digest LIMIT ?'),
    deleteManifest: db.prepare('DELETE FROM manifests WHERE digest = ?'),
    deleteManifestRefs: db.prepare('DELETE FROM manifest_refs WHERE manifest = ?'),
    tagsOf: db.prepare(
      'SELECT repo, tag, digest, media_type FROM tags WHERE registry = ? ORDER BY repo, tag',
    ),
    totals: db.prepare(
      `SELECT kind, method, result, sum(requests) AS requests, sum(bytes_cache) AS bytes_cache,
         sum(bytes_upstream) AS bytes_upstream FROM accounting GROUP BY kind, method, result`,
    ),
  }
}
