// Which pullcache nodes make up the cluster, which of them answer, and which one owns a key.
//
// The nodes are a static list (cluster.peers, reloaded on SIGHUP), the nodes that sources name
// (a DNS name, the bucket's heartbeats: cluster/member-source.ts), asked at the start of every
// round, plus this node (cluster.node_url). Each peer is probed at /_pullcache/healthz every
// PROBE_MS; a peer that misses PROBE_MISSES_DOWN probes in a row (no answer within
// PROBE_TIMEOUT_MS), or that a relay could not reach, is out until a probe finds it again. Static peers start in: a node that comes up must
// not move every key away from members it has not probed yet. A node a source names for the
// first time starts out and is probed in the same round: it may still be starting.
//
// Ownership is rendezvous (highest random weight) hashing of a key over the live nodes: every
// node that sees the same live set picks the same owner, and a node joining or leaving moves
// only its own keys. Ownership decides only who asks upstream; any node serves what it holds.

import { createHash } from 'node:crypto'
import type { Logger } from '../log.js'
import type { FoundBy, MemberSource } from './member-source.js'

const PROBE_MS = 2_000
const PROBE_TIMEOUT_MS = 1_000
/**
 * Probes in a row a peer must miss before it is counted out. One slow answer from a node busy
 * streaming is not a node gone, and flapping moves its keys back and forth (each move a second
 * upstream fetch); a node that is really gone also fails the relays, which count it out at once.
 */
const PROBE_MISSES_DOWN = 2
/** How long a stopping node tries to tell the others it leaves. */
const LEAVE_TIMEOUT_MS = 3_000

export interface MembershipOptions {
  /** This node's URL as the others reach it. */
  self: string
  peers: readonly string[]
  log: Logger
  /** Sources of members besides the static list, asked every round. */
  sources?: readonly MemberSource[]
  /** Probe interval; tests shorten it. */
  probeMs?: number
}

/** One node as stats and `cluster check` show it. */
export interface MemberView {
  url: string
  self: boolean
  live: boolean
  /** How it was found: 'self' for this node, else the sources that name it. */
  found: (FoundBy | 'self')[]
}

export class Membership {
  readonly self: string
  private readonly log: Logger
  private peers: string[] = []
  /** What each source named last, by source; the static list under 'static'. */
  private readonly named = new Map<FoundBy, string[]>()
  /** Sources whose last ask failed, so a failure is logged once, not every round. */
  private readonly failing = new Set<FoundBy>()
  /** Sources found not to name this node, so that is logged once. */
  private readonly strangers = new Set<FoundBy>()
  private readonly sources: readonly MemberSource[]
  private readonly down = new Set<string>()
  /** Probes missed in a row, by peer, since its last answer. */
  private readonly misses = new Map<string, number>()
  private readonly timer: NodeJS.Timeout
  private round: Promise<void> | undefined

  constructor(opts: MembershipOptions) {
    this.self = opts.self
    this.log = opts.log
    this.sources = opts.sources ?? []
    this.setPeers(opts.peers)
    this.timer = setInterval(() => void this.probe(), opts.probeMs ?? PROBE_MS)
    this.timer.unref()
    // Found members count only once asked: the first round runs now, not a probe interval later.
    if (this.sources.length > 0) void this.probe()
  }

  /** A new static peer list (SIGHUP); returns whether it changed. This node is always a member. */
  setPeers(peers: readonly string[]): boolean {
    const next = [...new Set(peers.filter((p) => p !== this.self))].sort()
    if (next.join('\n') === (this.named.get('static') ?? []).join('\n')) return false
    this.named.set('static', next)
    this.merge()
    return true
  }

  /** The peers are every source's names together; a node first named by a source starts out. */
  private merge(): void {
    const before = new Set(this.peers)
    const next = [...new Set([...this.named.values()].flat())].filter((p) => p !== this.self).sort()
    if (next.join('\n') === this.peers.join('\n')) return
    const staticPeers = this.named.get('static') ?? []
    for (const url of next) if (!before.has(url) && !staticPeers.includes(url)) this.down.add(url)
    for (const url of [...this.down]) if (!next.includes(url)) this.down.delete(url)
    for (const url of [...this.misses.keys()]) if (!next.includes(url)) this.misses.delete(url)
    this.peers = next
    this.log.info('cluster.members', {
      self: this.self,
      peers: next.map((url) => ({ url, found: this.foundBy(url) })),
    })
  }

  private foundBy(url: string): FoundBy[] {
    return [...this.named].filter(([, urls]) => urls.includes(url)).map(([source]) => source)
  }

  /** Whether there are other nodes at all: a single node never relays. */
  get clustered(): boolean {
    return this.peers.length > 0
  }

  /** Every node this one counts as answering, itself included, in a stable order. */
  live(): string[] {
    return [this.self, ...this.peers.filter((p) => !this.down.has(p))].sort()
  }

  /** Every known node with whether it answers and how it was found, for stats and `cluster check`. */
  members(): MemberView[] {
    return [this.self, ...this.peers].sort().map((url) => ({
      url,
      self: url === this.self,
      live: url === this.self || !this.down.has(url),
      found: url === this.self ? ['self'] : this.foundBy(url),
    }))
  }

  /** The live node that fetches `key` from upstream for the whole cluster. */
  ownerOf(key: string): string {
    let best = this.self
    let bestScore = ''
    for (const node of this.live()) {
      const score = createHash('sha256').update(node).update('\0').update(key).digest('hex')
      if (score > bestScore) {
        best = node
        bestScore = score
      }
    }
    return best
  }

  /** A relay could not reach `url`: out of the live set until a probe finds it again. */
  markDown(url: string, reason: string): void {
    if (url === this.self || this.down.has(url)) return
    this.down.add(url)
    this.log.warn('cluster.member_down', { url, reason })
  }

  /** One round: ask the sources, then probe every peer. Rounds never overlap. */
  private probe(): Promise<void> {
    this.round ??= this.runRound().finally(() => {
      this.round = undefined
    })
    return this.round
  }

  private async runRound(): Promise<void> {
    await Promise.all(
      this.sources.map(async (source) => {
        try {
          const urls = await source.discover()
          this.named.set(source.name, urls)
          if (this.failing.delete(source.name)) this.log.info('cluster.source_ok', { source: source.name })
          // A DNS name that does not resolve to node_url: this node would count itself as
          // another node. Said once, for the operator to set node_url as the name resolves it.
          if (!urls.includes(this.self) && !this.strangers.has(source.name)) {
            this.strangers.add(source.name)
            this.log.warn('cluster.self_not_named', { source: source.name, self: this.self, named: urls })
          }
        } catch (err) {
          if (this.failing.has(source.name)) return
          this.failing.add(source.name)
          this.log.warn('cluster.source_failed', {
            source: source.name,
            error: err,
            kept: this.named.get(source.name) ?? [],
          })
        }
      }),
    )
    this.merge()
    await Promise.all(
      this.peers.map(async (url) => {
        const ok = await fetch(`${url}/_pullcache/healthz`, {
          signal: AbortSignal.timeout(PROBE_TIMEOUT_MS),
        })
          .then(async (res) => {
            await res.body?.cancel()
            return res.ok
          })
          .catch(() => false)
        if (ok) {
          this.misses.delete(url)
          if (this.down.delete(url)) this.log.info('cluster.member_up', { url })
          return
        }
        const missed = (this.misses.get(url) ?? 0) + 1
        this.misses.set(url, missed)
        if (missed >= PROBE_MISSES_DOWN) this.markDown(url, `${missed} health probes missed`)
      }),
    )
  }

  /**
   * A graceful stop: no more rounds, and once the one under way is over, each source lets the
   * others know (the bucket's heartbeat is removed), so they stop counting this node at once.
   */
  async leave(): Promise<void> {
    clearInterval(this.timer)
    const left = (async () => {
      await this.round
      await Promise.all(
        this.sources.map((source) =>
          source
            .leave()
            .catch((err: unknown) =>
              this.log.warn('cluster.leave_failed', { source: source.name, error: err }),
            ),
        ),
      )
    })()
    // An unreachable bucket must not hold the stop up: the heartbeat then ages out instead.
    let timer: NodeJS.Timeout | undefined
    await Promise.race([left, new Promise((r) => (timer = setTimeout(r, LEAVE_TIMEOUT_MS)))])
    clearTimeout(timer)
  }

  close(): void {
    clearInterval(this.timer)
  }
}
