// The index's queries behind eviction (store/eviction.ts says what is evicted and when): blobs
// oldest first, manifests unused for too long, and the tags and references that pins follow.
// Every walk goes through an index and stops early, so none of them costs a scan of a large store.

import type Database from 'better-sqlite3'

/** Blobs oldest first, before a cutoff, after a cursor: one range over blobs_last_access. */
export const OLDEST_SQL = `SELECT digest, size, coalesce(allocated, size) AS allocated, last_access AS lastAccess
  FROM blobs WHERE last_access < ? AND (last_access, digest) > (?, ?) ORDER BY last_access, digest LIMIT ?`

export interface AgedBlob {
  digest: string
  size: number
  /** Bytes on disk; the logical size until the file is measured. */
  allocated: number
  lastAccess: number
}

export interface TagKey {
  registry: string
  repo: string
  tag: string
}

/**
 * The blobs only one upstream registry's repositories brought in (upstreams[i] with a budget
 * share): linked to a repository under its name prefix ("ghcr.io/"), and to none outside it.
 * @registry registry key, @start @end the prefix's range of repository names. A blob another registry's
 * repositories also use is not this one's to give up.
 */
const OWN_BLOBS = `FROM blobs b
  WHERE b.digest IN (SELECT digest FROM repo_links WHERE registry = @registry AND kind = 'blob' AND repo >= @start AND repo < @end)
    AND NOT EXISTS (SELECT 1 FROM repo_links o
      WHERE o.digest = b.digest AND NOT (o.registry = @registry AND o.repo >= @start AND o.repo < @end))`

/** Tags read per page by the server's pin walk. */
export const TAG_PAGE = 2000

export class EvictionQueries {
  private readonly stmt: ReturnType<typeof prepare>
  /** Forgets a manifest with its tags, references and links, in one transaction. */
  readonly dropManifest: (digest: string) => number

  constructor(db: Database.Database) {
    const stmt = prepare(db)
    this.stmt = stmt
    this.dropManifest = db.transaction((digest: string) => {
      const gone = stmt.deleteTagsOf.run(digest).changes
      stmt.deleteRefsOf.run(digest)
      stmt.deleteLinksOf.run(digest)
      stmt.deleteManifest.run(digest)
      return gone
    })
  }

  /**
   * Blobs in last-access order (the blobs_last_access index, digest breaking ties), accessed
   * before `cutoff` when given, after the cursor when given. Lazy: read it to the end, or the
   * statement stays busy and the connection refuses writes.
   */
  oldest(
    cutoff: number | null,
    limit = -1,
    after?: { lastAccess: number; digest: string },
  ): IterableIterator<AgedBlob> {
    return this.stmt.oldest.iterate(
      cutoff ?? Number.MAX_SAFE_INTEGER,
      after?.lastAccess ?? Number.MIN_SAFE_INTEGER,
      after?.digest ?? '',
      limit,
    ) as IterableIterator<AgedBlob>
  }

  /** Bytes on disk of the blobs only this prefix's repositories use (OWN_BLOBS). */
  ownBytes(registry: string, prefix: string): number {
    return this.stmt.ownBytes.pluck().get({ registry, start: prefix, end: prefixEnd(prefix) }) as number
  }

  /** Those blobs least recently used first, after the cursor when given. */
  ownOldest(
    registry: string,
    prefix: string,
    limit: number,
    after?: { lastAccess: number; digest: string },
  ): AgedBlob[] {
    return this.stmt.ownOldest.all({
      registry,
      start: prefix,
      end: prefixEnd(prefix),
      afterAccess: after?.lastAccess ?? Number.MIN_SAFE_INTEGER,
      afterDigest: after?.digest ?? '',
      limit,
    }) as AgedBlob[]
  }

  /** Every manifest last used before `before`, oldest first. */
  unusedManifests(before: number): { digest: string; last_access: number }[] {
    return this.stmt.unusedManifests.all(before) as { digest: string; last_access: number }[]
  }

  /** The first `limit` manifests last used before `before`, oldest first (digests). */
  unusedManifestPage(before: number, limit: number): string[] {
    return this.stmt.unusedManifestPage.pluck().all(before, limit) as string[]
  }

  /** The tags pointing at a manifest. */
  tagsAt(digest: string): TagKey[] {
    return this.stmt.tagsAt.all(digest) as TagKey[]
  }

  /** Every tag, lazily (for a plan, which runs outside the server). */
  allTags(): IterableIterator<{ repo: string; tag: string; digest: string }> {
    return this.stmt.allTags.iterate() as IterableIterator<{ repo: string; tag: string; digest: string }>
  }

  /** Up to TAG_PAGE tags after a key, in key order: the server's walk, a page per turn. */
  tagPage(after: TagKey): (TagKey & { digest: string })[] {
    return this.stmt.tagPage.all(after.registry, after.repo, after.tag) as (TagKey & { digest: string })[]
  }

  /** What a manifest references: its config and layers, or an index's child manifests. */
  children(digest: string): string[] {
    return this.stmt.children.pluck().all(digest) as string[]
  }
}

/** The first name after every name that starts with `prefix` ("ghcr.io/" -> "ghcr.io0"). */
function prefixEnd(prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)
}

function prepare(db: Database.Database) {
  return {
    oldest: db.prepare(OLDEST_SQL),
    ownBytes: db.prepare(`SELECT coalesce(sum(coalesce(b.allocated, b.size)), 0) ${OWN_BLOBS}`),
    ownOldest: db.prepare(
      `SELECT b.digest, b.size, coalesce(b.allocated, b.size) AS allocated, b.last_access AS lastAccess ${OWN_BLOBS}
       AND (b.last_access, b.digest) > (@afterAccess, @afterDigest) ORDER BY b.last_access, b.digest LIMIT @limit`,
    ),
    unusedManifests: db.prepare(
      'SELECT digest, last_access FROM manifests WHERE last_access < ? ORDER BY last_access',
    ),
    unusedManifestPage: db.prepare(
      'SELECT digest FROM manifests WHERE last_access < ? ORDER BY last_access LIMIT ?',
    ),
    tagsAt: db.prepare('SELECT registry, repo, tag FROM tags WHERE digest = ?'),
    allTags: db.prepare('SELECT repo, tag, digest FROM tags'),
    tagPage: db.prepare(
      `SELECT registry, repo, tag, digest FROM tags WHERE (registry, repo, tag) > (?, ?, ?)
       ORDER BY registry, repo, tag LIMIT ${TAG_PAGE}`,
    ),
    children: db.prepare('SELECT child FROM manifest_refs WHERE manifest = ?'),
    deleteTagsOf: db.prepare('DELETE FROM tags WHERE digest = ?'),
    deleteRefsOf: db.prepare('DELETE FROM manifest_refs WHERE manifest = ?'),
    deleteLinksOf: db.prepare('DELETE FROM repo_links WHERE digest = ?'),
    deleteManifest: db.prepare('DELETE FROM manifests WHERE digest = ?'),
  }
}
