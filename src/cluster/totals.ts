// The cluster's totals beside a node's own figures: each live member is asked for its figures
// (GET /_pullcache/cluster/stats with the cluster secret) and the answers are summed
// (src/cluster/figures.ts says what is counted once). A member that is down, does not answer
// within a second, refuses the secret or answers nonsense is named among the missing and left
// out of the sum: the totals are then a floor, and never a reason for the stats to fail. The
// answers are kept a few seconds, so a status page reloaded by many browsers asks each member
// once per few seconds.

import { PEER_HEADER } from '../upstream/cluster-upstream.js'
import { isFigures, type NodeFigures, sumFigures } from './figures.js'

export const CLUSTER_STATS_PATH = '/_pullcache/cluster/stats'
const ASK_TIMEOUT_MS = 1_000
const KEEP_MS = 5_000

/** A member as the totals name it: counted, or why not. */
export interface MemberFigures {
  url: string
  self: boolean
  /** Whether this node counts it as answering (its health probes). */
  live: boolean
  /** Its figures, or null when it is left out of the totals. */
  figures: NodeFigures | null
  /** Why it is left out; null when counted. */
  problem: string | null
}

/** The `cluster` part of the stats document. */
export interface ClusterReport {
  /** Each node's figures run from its own start; this is when the members' were gathered. */
  gathered_at: string
  /**
   * This node's client figures, defined as the totals' are; null when its server did not answer
   * (`pullcache stats` asks the running server).
   */
  node: NodeFigures | null
  /** The sum over the members counted. */
  totals: NodeFigures
  members: MemberFigures[]
  /** The members left out of the totals (down, or no usable answer). */
  missing: string[]
}

/** Asks one node for its figures; a problem in words when there is no usable answer. */
export async function askFigures(
  url: string,
  secret: string,
  timeoutMs = ASK_TIMEOUT_MS,
): Promise<{ figures: NodeFigures } | { problem: string }> {
  try {
    const res = await fetch(`${url}${CLUSTER_STATS_PATH}`, {
      headers: { [PEER_HEADER]: secret },
      signal: AbortSignal.timeout(timeoutMs),
    })
    if (!res.ok) {
      await res.body?.cancel()
      return { problem: res.status === 403 ? 'the cluster secret was refused' : `answered ${res.status}` }
    }
    const body: unknown = await res.json()
    return isFigures(body) ? { figures: body } : { problem: 'answered without figures' }
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code
    return { problem: cause ?? (err as Error).message }
  }
}

/** The members, each with its figures or its problem, and their sum. */
export function clusterReport(
  node: NodeFigures | null,
  members: MemberFigures[],
  gatheredAt: number,
): ClusterReport {
  const counted = members.filter((m) => m.figures !== null)
  return {
    gathered_at: new Date(gatheredAt).toISOString(),
    node,
    totals: sumFigures(counted.map((m) => m.figures!)),
    members,
    missing: members.filter((m) => m.figures === null).map((m) => m.url),
  }
}

/**
 * Every configured node asked directly, as `pullcache stats` does: no node's view of who is
 * down is at hand, so each gets the whole timeout.
 */
export async function askEveryNode(
  self: string,
  urls: readonly string[],
  secret: string,
  timeoutMs: number,
): Promise<ClusterReport> {
  const at = Date.now()
  const members = await Promise.all(
    [...new Set([self, ...urls])].sort().map(async (url): Promise<MemberFigures> => {
      const got = await askFigures(url, secret, timeoutMs)
      const live = 'figures' in got
      return live
        ? { url, self: url === self, live, figures: got.figures, problem: null }
        : { url, self: url === self, live, figures: null, problem: got.problem }
    }),
  )
  return clusterReport(members.find((m) => m.self)?.figures ?? null, members, at)
}

/** What the totals need of the membership. */
export interface MemberList {
  readonly self: string
  members(): { url: string; self: boolean; live: boolean }[]
}

export interface ClusterTotalsOptions {
  membership: MemberList
  secret: string | null
  /** This node's own figures, read fresh each time. */
  own: () => Promise<NodeFigures>
  timeoutMs?: number
  keepMs?: number
}

/** The running node's view: its own figures fresh, the others' kept KEEP_MS. */
export class ClusterTotals {
  private readonly opts: ClusterTotalsOptions
  private others: { at: number; answers: Promise<Map<string, MemberFigures>> } | undefined

  constructor(opts: ClusterTotalsOptions) {
    this.opts = opts
  }

  async report(): Promise<ClusterReport> {
    const now = Date.now()
    const keepMs = this.opts.keepMs ?? KEEP_MS
    if (this.others === undefined || now - this.others.at >= keepMs) {
      this.others = { at: now, answers: this.askOthers() }
    }
    const { at, answers } = this.others
    const [node, others] = await Promise.all([this.opts.own(), answers])
    const members = this.opts.membership
      .members()
      .map((m) => (m.self ? { ...m, figures: node, problem: null } : others.get(m.url)))
      .filter((m): m is MemberFigures => m !== undefined)
    return clusterReport(node, members, at)
  }

  private async askOthers(): Promise<Map<string, MemberFigures>> {
    const { membership, secret } = this.opts
    const others = membership.members().filter((m) => !m.self)
    const answers = await Promise.all(
      others.map(async (m): Promise<MemberFigures> => {
        if (!m.live) return { ...m, figures: null, problem: 'down: not answering its health probes' }
        if (secret === null) return { ...m, figures: null, problem: 'no cluster secret to ask with' }
        const got = await askFigures(m.url, secret, this.opts.timeoutMs)
        return 'figures' in got ? { ...m, ...got, problem: null } : { ...m, figures: null, ...got }
      }),
    )
    return new Map(answers.map((a) => [a.url, a]))
  }
}
