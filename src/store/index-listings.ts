// Lists answered from the index: the referrers lists kept per (repository, digest), and the
// repositories with content here, for _catalog, walked in name order with two index seeks per
// name whatever the store holds.

import type Database from 'better-sqlite3'

export class ListingQueries {
  private readonly getReferrersStmt: Database.Statement
  private readonly setReferrersStmt: Database.Statement
  private readonly nextTagged: Database.Statement
  private readonly nextLinked: Database.Statement

  constructor(db: Database.Database) {
    this.getReferrersStmt = db.prepare(
      'SELECT body, fetched_at FROM referrers WHERE registry = ? AND repo = ? AND digest = ?',
    )
    this.setReferrersStmt = db.prepare(
      `INSERT INTO referrers (registry, repo, digest, body, fetched_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (registry, repo, digest) DO UPDATE SET body = excluded.body, fetched_at = excluded.fetched_at`,
    )
    // The primary keys of tags and repo_links lead with (registry, repo): each is one seek.
    this.nextTagged = db.prepare('SELECT min(repo) FROM tags WHERE registry = ? AND repo > ?').pluck()
    this.nextLinked = db.prepare('SELECT min(repo) FROM repo_links WHERE registry = ? AND repo > ?').pluck()
  }

  /** The last referrers answer for (repo, digest): the descriptors as JSON, and when fetched. */
  getReferrers(
    registry: string,
    repo: string,
    digest: string,
  ): { body: Buffer; fetched_at: number } | undefined {
    return this.getReferrersStmt.get(registry, repo, digest) as
      | { body: Buffer; fetched_at: number }
      | undefined
  }

  setReferrers(registry: string, repo: string, digest: string, body: Buffer, now = Date.now()): void {
    this.setReferrersStmt.run(registry, repo, digest, body, now)
  }

  /**
   * Up to `limit` repositories of this registry with content here (a tag or a link), in order,
   * after `after`. Links still buffered by the index appear once written.
   */
  repositories(registry: string, after: string, limit: number): string[] {
    const out: string[] = []
    let last = after
    while (out.length < limit) {
      const tagged = this.nextTagged.get(registry, last) as string | null
      const linked = this.nextLinked.get(registry, last) as string | null
      // The smaller of the two names (strings: Math.min does not apply).
      const next = [tagged, linked].filter((r): r is string => r !== null).sort()[0]
      if (next === undefined) break
      out.push(next)
      last = next
    }
    return out
  }
}
