// Which node of a cluster owns a key, as every node computes it while all are live: the same
// rendezvous hashing (src/cluster/membership.ts), so a test can pick the owner or a relaying node.

import { Membership } from '../../src/cluster/membership.js'
import { createLogger } from '../../src/log.js'

export function ownerOf(urls: string[], key: string): string {
  const members = new Membership({ self: urls[0]!, peers: urls, log: createLogger('error', () => {}) })
  try {
    return members.ownerOf(key)
  } finally {
    members.close()
  }
}
