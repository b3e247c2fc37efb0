// The member sources a node's config asks for (cluster.peers_dns, cluster.peers_from_bucket),
// opened for a running server. The bucket's board comes through store/shared-tier-start.ts,
// which imports the AWS SDK only then.

import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import { bucketSettings, openMemberBoard } from '../store/shared-tier-start.js'
import { VERSION } from '../version.js'
import { BucketMembers } from './bucket-members.js'
import { DnsMembers } from './dns-members.js'
import type { MemberSource } from './member-source.js'

export async function memberSources(config: Config, self: string, log: Logger): Promise<MemberSource[]> {
  const sources: MemberSource[] = []
  if (config.cluster.peers_dns !== null) sources.push(new DnsMembers(config.cluster.peers_dns))
  if (config.cluster.peers_from_bucket) {
    const board = await openMemberBoard(bucketSettings(config.storage))
    sources.push(new BucketMembers({ board, self, version: VERSION, log }))
  }
  return sources
}
