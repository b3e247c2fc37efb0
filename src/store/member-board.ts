// Heartbeats of the cluster's nodes in the bucket: the board cluster/bucket-members.ts reads to
// find the members, drawn here because the bucket's layout is the store's.
//
//   <prefix>members/<node id>    {"url", "startedAt", "version"}, rewritten every few seconds
//
// Ages are measured against the bucket's own clock (the Date header of the LIST's answer) and
// the objects' LastModified, which the bucket also stamps, so the nodes' clocks never enter.
// The S3 implementation is store/s3-members.ts, loaded with the SDK only for S3 storage.

/** What a node writes about itself. */
export interface Heartbeat {
  url: string
  startedAt: string
  version: string
}

/** One heartbeat object as a LIST found it. */
export interface BoardEntry {
  nodeId: string
  /** The bucket's time of the last write. */
  lastModified: Date
  /** The object's content, or undefined when it could not be read or parsed (a node mid-write). */
  heartbeat: Heartbeat | undefined
}

export interface MemberBoard {
  /** Writes (or rewrites) this node's heartbeat. */
  beat(nodeId: string, heartbeat: Heartbeat): Promise<void>
  /** Every heartbeat under the prefix, and the bucket's time of the answer. */
  read(): Promise<{ now: Date; entries: BoardEntry[] }>
  /** Removes a node's heartbeat (its own on a graceful stop, or one long gone). */
  remove(nodeId: string): Promise<void>
  /** Lets go of connections. */
  close(): void
}

/** The folder of heartbeats under `prefix` (which ends in '/' when not empty). */
export function membersPrefix(prefix: string): string {
  return `${prefix}members/`
}
