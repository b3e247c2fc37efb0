// Where the members of a cluster come from besides the static list (cluster.peers): a DNS name
// whose addresses are the nodes (cluster/dns-members.ts, a Kubernetes headless Service) or the
// nodes' heartbeats in the bucket (cluster/bucket-members.ts). Membership asks each source on
// every probe round; what a source names is still probed, since a name or a heartbeat says a
// node exists, not that it answers now.

/** How a member was found: the static list, a DNS name, the bucket's heartbeats. */
export type FoundBy = 'static' | 'dns' | 'bucket'

export interface MemberSource {
  readonly name: Exclude<FoundBy, 'static'>
  /**
   * The node URLs the source names now. Rejects when it cannot tell (DNS or bucket unreachable):
   * the members it named last stay, and probes keep deciding which answer.
   */
  discover(): Promise<string[]>
  /** A graceful stop: the source lets the others know this node leaves, and lets go. */
  leave(): Promise<void>
}
