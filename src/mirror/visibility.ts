// What a client without an account may read: exactly what an anonymous pull upstream may read,
// and nothing more. With an upstream account configured, pullcache fetches as that account, so
// what it caches may include the account's private repositories; this module keeps those from
// anonymous clients.
//
//   repository R: the index's repo_access row, if checked within ACCESS_TTL_MS; else upstream's
//                 anonymous token (or an anonymous tags/list) decides, and the answer is written
//                 to repo_access. No answer and no row: fail closed (UNAVAILABLE).
//   digest D in R (R readable): D linked to R (upstream confirmed R has it), or D linked to any
//                 repository anonymous pulls may read (public content is shared by digest);
//                 else an anonymous HEAD of R's D upstream decides, and a yes links D to R.
//
// With no upstream account, what is fetched now is fetched anonymously: a repository with no row
// and nothing cached under it is recorded 'assumed' (public) without asking; one recorded private
// earlier stays private until upstream says otherwise, and one with content cached (perhaps by the
// account, earlier) is checked. Once an account is configured, 'assumed' answers are forgotten
// and never count as public: signed-in clients may have fetched private content under such names.

import { RegistryError, UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { IndexDb } from '../store/index-db.js'
import type { Upstream } from '../upstream/client.js'

/** How long an answer about a repository stands before upstream is asked again. */
export const ACCESS_TTL_MS = 60 * 60 * 1000

export interface VisibilityOptions {
  upstream: Upstream
  index: IndexDb
  log: Logger
}

export class Visibility {
  private readonly upstream: Upstream
  private readonly index: IndexDb
  private readonly log: Logger
  private readonly flights = new Map<string, Promise<boolean>>()
  /** Whether the last look found an account configured (it can come and go on reload). */
  private sawAccount = false

  constructor(opts: VisibilityOptions) {
    this.upstream = opts.upstream
    this.index = opts.index
    this.log = opts.log
  }

  /**
   * Whether anonymous pulls may read the repository (its upstream name). Throws UNAVAILABLE
   * when that is not known and upstream cannot be asked now.
   */
  repoReadable(repo: string, now = Date.now()): Promise<boolean> | boolean {
    const registry = this.upstream.registry
    const account = this.withAccount()
    const row = this.index.getRepoAccess(registry, repo)
    if (!account && (row?.access === 'public' || row?.access === 'assumed')) return true
    if (!account && row === undefined && !this.index.hasLinks(registry, repo)) {
      this.index.setRepoAccess(registry, repo, 'assumed', now)
      return true
    }
    if (row !== undefined && row.access !== 'assumed' && now - row.checked_at < ACCESS_TTL_MS) {
      return row.access === 'public'
    }
    return this.flight(`repo\0${repo}`, async () => {
      let access: 'public' | 'private'
      try {
        access = await this.upstream.anonymousAccess(repo)
      } catch (err) {
        // A known answer, even an old one, beats none; with none, anonymous clients get nothing.
        if (row !== undefined && row.access !== 'assumed') return row.access === 'public'
        this.log.warn('access.check_failed', { repo, error: err })
        throw unknown(repo, err)
      }
      this.index.setRepoAccess(registry, repo, access)
      if (row?.access !== access) this.log.info('access.learned', { repo, access, was: row?.access ?? null })
      return access === 'public'
    })
  }

  /**
   * Whether an anonymous client may have this cached digest under this repository, which it may
   * read (see the top of this module). Throws UNAVAILABLE when upstream cannot be asked now.
   */
  async digestReadable(repo: string, digest: string, kind: 'blob' | 'manifest'): Promise<boolean> {
    const registry = this.upstream.registry
    if (this.index.hasLink(registry, repo, digest)) return true
    if (this.index.linkedToPublic(registry, digest, !this.withAccount())) return true
    return this.flight(`digest\0${repo}\0${digest}`, async () => {
      let has: boolean
      try {
        has = await this.upstream.anonymousHas(repo, digest, kind)
      } catch (err) {
        this.log.warn('access.check_failed', { repo, digest, error: err })
        throw unknown(repo, err)
      }
      if (has) this.index.link(registry, repo, digest, kind)
      return has
    })
  }

  /**
   * Which repositories anonymous viewers may see named (status page, stats): those of this
   * registry recorded public, and 'assumed' ones while no account is configured.
   */
  publicScope(): { registry: string; assumed: boolean } {
    return { registry: this.upstream.registry, assumed: !this.withAccount() }
  }

  /**
   * Looks at whether the upstream has an account now (at start, and when credentials change):
   * the index is shared by every upstream, so 'assumed' answers must be forgotten as soon as
   * one has an account, not when its own visibility is next asked.
   */
  noteAccount(): void {
    this.withAccount()
  }

  /** Whether an account is configured now; forgets 'assumed' answers when one has appeared. */
  private withAccount(): boolean {
    const account = this.upstream.hasCredentials
    if (account && !this.sawAccount) this.index.forgetAssumed(this.upstream.registry)
    this.sawAccount = account
    return account
  }

  private flight(key: string, run: () => Promise<boolean>): Promise<boolean> {
    const existing = this.flights.get(key)
    if (existing) return existing
    const started = run().finally(() => this.flights.delete(key))
    this.flights.set(key, started)
    return started
  }
}

function unknown(repo: string, err: unknown): RegistryError {
  const reason = err instanceof UpstreamError ? err.kind : 'error'
  return new RegistryError(
    'UNAVAILABLE',
    {
      repository: repo,
      reason: `cannot learn from upstream now whether anonymous pulls may read it (${reason})`,
    },
    { message: 'access to this repository cannot be checked now' },
  )
}
