// The statements IndexDb runs on its rows (blobs, manifests, tags, repositories, the store's
// running totals and state), prepared once per connection, and the rows they return. The tables
// are in index-schema.ts.

import type Database from 'better-sqlite3'

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

export type Statements = ReturnType<typeof prepare>

export function prepare(db: Database.Database) {
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
    isPublicRepo: db.prepare(
      `SELECT 1 FROM repo_access WHERE registry = ? AND repo = ? AND (access = 'public' OR (access = 'assumed' AND ?))`,
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
