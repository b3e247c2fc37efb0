// Members from heartbeats in the bucket (cluster.peers_from_bucket): on every round a node
// rewrites its own heartbeat and lists everyone's; a node is a member while its heartbeat was
// written within LIVE_MS of the LIST's answer, both by the bucket's clock. A node removes its
// heartbeat when it stops gracefully; one killed leaves it to age out, and any node deletes
// heartbeats older than FORGET_MS so the folder does not collect every node that ever ran.

import { createHash } from 'node:crypto'
import type { Logger } from '../log.js'
import type { MemberBoard } from '../store/member-board.js'
import type { MemberSource } from './member-source.js'

/** A heartbeat older than this (by the bucket's clock) is a node gone. */
export const LIVE_MS = 10_000
/** A heartbeat older than this is removed by whichever node sees it. */
export const FORGET_MS = 600_000

export interface BucketMembersOptions {
  board: MemberBoard
  self: string
  version: string
  log: Logger
  liveMs?: number
  forgetMs?: number
}

/** A node's key in the board: from its URL, so a node restarted at the same URL replaces its own. */
export function nodeId(url: string): string {
  return createHash('sha256').update(url).digest('hex').slice(0, 32)
}

export class BucketMembers implements MemberSource {
  readonly name = 'bucket'
  private readonly board: MemberBoard
  private readonly self: string
  private readonly id: string
  private readonly heartbeat: { url: string; startedAt: string; version: string }
  private readonly log: Logger
  private readonly liveMs: number
  private readonly forgetMs: number
  private left = false

  constructor(opts: BucketMembersOptions) {
    this.board = opts.board
    this.self = opts.self
    this.id = nodeId(opts.self)
    this.heartbeat = { url: opts.self, startedAt: new Date().toISOString(), version: opts.version }
    this.log = opts.log
    this.liveMs = opts.liveMs ?? LIVE_MS
    this.forgetMs = opts.forgetMs ?? FORGET_MS
  }

  async discover(): Promise<string[]> {
    // After leave(), a round already under way must not write the heartbeat back.
    if (this.left) return []
    await this.board.beat(this.id, this.heartbeat)
    const { now, entries } = await this.board.read()
    const live: string[] = []
    for (const entry of entries) {
      const age = now.getTime() - entry.lastModified.getTime()
      if (age > this.forgetMs && entry.nodeId !== this.id) {
        this.board
          .remove(entry.nodeId)
          .then(() => this.log.info('cluster.heartbeat_removed', { node_id: entry.nodeId, age_ms: age }))
          .catch((err: unknown) => this.log.warn('cluster.heartbeat_remove_failed', { error: err }))
        continue
      }
      if (age <= this.liveMs && entry.heartbeat !== undefined) live.push(entry.heartbeat.url)
    }
    if (!live.includes(this.self)) live.push(this.self)
    return [...new Set(live)].sort()
  }

  async leave(): Promise<void> {
    this.left = true
    try {
      await this.board.remove(this.id)
    } finally {
      this.board.close()
    }
  }
}
