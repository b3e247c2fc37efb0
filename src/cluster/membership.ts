// Which pullcache nodes make up the cluster, which of them answer, and which one owns a key.
//
// The nodes are a static list (cluster.peers, reloaded on SIGHUP) plus this node
// (cluster.node_url). Each peer is probed at /_pullcache/healthz every PROBE_MS; a peer that
// does not answer within PROBE_TIMEOUT_MS, or that a relay could not reach, is out until a probe
// finds it again. Peers start in: a node that comes up must not move every key away from
// members it has not probed yet.
//
// Ownership is rendezvous (highest random weight) hashing of a key over the live nodes: every
// node that sees the same live set picks the same owner, and a node joining or leaving moves
// only its own keys. Ownership decides only who asks upstream; any node serves what it holds.

import { createHash } from 'node:crypto'
import type { Logger } from '../log.js'

const PROBE_MS = 2_000
const PROBE_TIMEOUT_MS = 1_000

export interface MembershipOptions {
  /** This node's URL as the others reach it. */
  self: string
  peers: readonly string[]
  log: Logger
  /** Probe interval; tests shorten it. */
  probeMs?: number
}

export class Membership {
  readonly self: string
  private readonly log: Logger
  private peers: string[] = []
  private readonly down = new Set<string>()
  private readonly timer: NodeJS.Timeout
  private probing = false

  constructor(opts: MembershipOptions) {
    this.self = opts.self
    this.log = opts.log
    this.setPeers(opts.peers)
    this.timer = setInterval(() => void this.probe(), opts.probeMs ?? PROBE_MS)
    this.timer.unref()
  }

  /** A new peer list (SIGHUP); returns whether it changed. This node is always a member. */
  setPeers(peers: readonly string[]): boolean {
    const next = [...new Set(peers.filter((p) => p !== this.self))].sort()
    if (next.join('\n') === this.peers.join('\n')) return false
    this.peers = next
    for (const url of [...this.down]) if (!next.includes(url)) this.down.delete(url)
    this.log.info('cluster.members', { self: this.self, peers: next })
    return true
  }

  /** Whether there are other nodes at all: a single node never relays. */
  get clustered(): boolean {
    return this.peers.length > 0
  }

  /** Every node this one counts as answering, itself included, in a stable order. */
  live(): string[] {
    return [this.self, ...this.peers.filter((p) => !this.down.has(p))].sort()
  }

  /** Every configured node with whether it answers, for stats and `cluster check`. */
  members(): { url: string; self: boolean; live: boolean }[] {
    return [this.self, ...this.peers]
      .sort()
      .map((url) => ({ url, self: url === this.self, live: url === this.self || !this.down.has(url) }))
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

  private async probe(): Promise<void> {
    if (this.probing) return
    this.probing = true
    try {
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
          if (ok && this.down.delete(url)) this.log.info('cluster.member_up', { url })
          if (!ok) this.markDown(url, 'health probe failed')
        }),
      )
    } finally {
      this.probing = false
    }
  }

  close(): void {
    clearInterval(this.timer)
  }
}
