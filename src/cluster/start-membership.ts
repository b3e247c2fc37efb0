// The membership a node's config asks for: none without cluster.node_url; else the static list
// (cluster.peers) and the sources named by cluster.peers_dns and cluster.peers_from_bucket. The
// bucket's board comes through store/shared-tier-start.ts, which imports the AWS SDK only then.

import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import { bucketSettings, openMemberBoard } from '../store/shared-tier-start.js'
import { VERSION } from '../version.js'
import { BucketMembers } from './bucket-members.js'
import { DnsMembers } from './dns-members.js'
import type { MemberSource } from './member-source.js'
import { Membership } from './membership.js'

export async function startMembership(config: Config, log: Logger): Promise<Membership | undefined> {
  const self = config.cluster.node_url
  if (self === null) return undefined
  const sources: MemberSource[] = []
  if (config.cluster.peers_dns !== null) sources.push(new DnsMembers(config.cluster.peers_dns))
  if (config.cluster.peers_from_bucket) {
    const board = await openMemberBoard(bucketSettings(config.storage))
    sources.push(new BucketMembers({ board, self, version: VERSION, log }))
  }
  return new Membership({ self, peers: config.cluster.peers, sources, log })
}
