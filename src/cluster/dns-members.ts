// Members from a DNS name (cluster.peers_dns): every A and AAAA record of the URL's host is a
// node, at the URL's scheme and port. A Kubernetes headless Service resolves to its pods' IPs,
// so each node's cluster.node_url must be its pod IP at the same port (http://$(POD_IP):5000)
// for it to know itself among them.

import { lookup as dnsLookup } from 'node:dns/promises'
import type { MemberSource } from './member-source.js'

/** dns.promises.lookup with {all: true}, or a stand-in for tests. */
export type Lookup = (host: string) => Promise<{ address: string; family: number }[]>

const systemLookup: Lookup = (host) => dnsLookup(host, { all: true })

export class DnsMembers implements MemberSource {
  readonly name = 'dns'
  private readonly url: URL
  private readonly lookup: Lookup

  constructor(name: string, lookup: Lookup = systemLookup) {
    this.url = new URL(name)
    this.lookup = lookup
  }

  async discover(): Promise<string[]> {
    const host = this.url.hostname.replace(/^\[(.*)\]$/, '$1')
    const port = this.url.port === '' ? '' : `:${this.url.port}`
    const records = await this.lookup(host)
    const urls = records.map((r) => {
      const address = r.family === 6 || r.address.includes(':') ? `[${r.address}]` : r.address
      // Through URL, as a configured node URL is (config-fields.ts nodeUrl): the same spelling.
      return new URL(`${this.url.protocol}//${address}${port}`).origin
    })
    return [...new Set(urls)].sort()
  }

  async leave(): Promise<void> {}
}
