// Opening the index, and its tables, drawn once, as the migrations that build them: each entry of MIGRATIONS
// takes the schema from version i to i + 1, inside one transaction, and user_version records how
// far a file got. A server migrates at open; a read-only connection (stats, verify) only accepts
// the version this pullcache writes.

import Database from 'better-sqlite3'

/** Each entry migrates the schema from version i to i + 1. Never edit one that has shipped. */
export const MIGRATIONS: string[] = [
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
  `
  -- The last answer to each referrers query (OCI referrers API, or the referrers tag schema on an
  -- upstream without it), per repository: referrers are listed under the repository they were
  -- asked of, never shared across repositories. Fetched_at dates it for the freshness window;
  -- an old answer is served when upstream cannot be asked.
  CREATE TABLE referrers (
    registry   TEXT NOT NULL,
    repo       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    body       BLOB NOT NULL,        -- the index's manifests array, as JSON
    fetched_at INTEGER NOT NULL,     -- ms since epoch
    PRIMARY KEY (registry, repo, digest)
  ) WITHOUT ROWID;
  `,
]

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

/** Pages of the SQLite cache; negative means KiB. Bounds the index's memory at any store size. */
const CACHE_KIB = 8192

/**
 * A connection to the index file, set up as every user of it needs. `readonly` is for commands
 * that only look while a server may be writing: the file must exist, and is never created or
 * migrated.
 */
export function connect(path: string, readonly: boolean): Database.Database {
  let db: Database.Database
  if (readonly) {
    db = new Database(path, { readonly: true, fileMustExist: true })
    db.pragma('busy_timeout = 5000')
    db.pragma(`cache_size = -${CACHE_KIB}`)
    checkVersion(db)
  } else {
    db = new Database(path)
    // WAL lets readers go on while a flush writes; NORMAL sync is durable across process crashes
    // and the store can always be reconciled from the files after a power loss.
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = NORMAL')
    db.pragma('busy_timeout = 5000')
    // The page cache is the index's only memory that could grow with the store: keep it fixed,
    // and keep the file out of the address space (no mmap), so RSS does not follow the index.
    db.pragma(`cache_size = -${CACHE_KIB}`)
    db.pragma('mmap_size = 0')
    migrate(db)
  }
  return db
}
