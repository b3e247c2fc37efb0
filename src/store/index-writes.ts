// The writes every request makes (hit counters, last access, repository links, accounting) are
// buffered here in memory and written in one transaction per flush, so the hot path never waits
// on a disk write. A flush interval of buffered use can be lost to a crash; content never is
// (a committed blob, a stored manifest, a moved tag go straight to the database).

import type Database from 'better-sqlite3'

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

export interface PendingLink {
  registry: string
  repo: string
  digest: string
  kind: 'blob' | 'manifest'
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
  links: Map<string, PendingLink>
  accounting: Map<string, Accounted & { hour: number; requests: number }>
}

const HOUR = 3_600_000

export class WriteBuffer {
  private pending: Pending = emptyPending()
  private readonly db: Database.Database
  private readonly stmt: ReturnType<typeof prepare>

  constructor(db: Database.Database) {
    this.db = db
    this.stmt = prepare(db)
  }

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

  link(registry: string, repo: string, digest: string, kind: 'blob' | 'manifest'): void {
    this.pending.links.set(`${registry}\0${repo}\0${digest}`, { registry, repo, digest, kind })
  }

  /** Links not written yet, for the lookups that must see them too. */
  links(): IterableIterator<PendingLink> {
    return this.pending.links.values()
  }

  hasLink(registry: string, repo: string, digest: string): boolean {
    return this.pending.links.has(`${registry}\0${repo}\0${digest}`)
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
}

function emptyPending(): Pending {
  return { blobs: new Map(), manifests: new Map(), tags: new Map(), links: new Map(), accounting: new Map() }
}

function prepare(db: Database.Database) {
  return {
    touchBlob: db.prepare(
      `UPDATE blobs SET hits = hits + ?, coalesced = coalesced + ?, misses = misses + ?,
         bytes_cache = bytes_cache + ?, bytes_upstream = bytes_upstream + ?, last_access = max(last_access, ?)
       WHERE digest = ?`,
    ),
    touchManifest: db.prepare(
      'UPDATE manifests SET hits = hits + ?, last_access = max(last_access, ?) WHERE digest = ?',
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
    link: db.prepare(
      'INSERT INTO repo_links (registry, repo, digest, kind) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING',
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
  }
}
