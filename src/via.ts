// Where a request has been, for mirrors stacked in tiers (a site pullcache whose upstream is a
// central one). Every request pullcache sends upstream carries a Via header (RFC 9110 §7.6.3):
// the Via of the client request it serves, then this process's own entry. A request whose Via
// already names this process has come round in a loop (a site and a central each other's
// upstream, say) and is refused at once, instead of each side joining its own pending fetch
// and both waiting for the upstream deadline.
//
// The client's Via reaches the upstream request through an AsyncLocalStorage, entered only for
// requests that arrived with a Via (those from another mirror or proxy): a request from a
// container runtime carries none and pays nothing. A fetch shared by several clients (single
// flight) carries the Via of the one that started it. The same store says whether the request
// was relayed by another node of the cluster (src/upstream/cluster-upstream.ts): such a request
// is answered by asking upstream, never relayed again.

import { AsyncLocalStorage } from 'node:async_hooks'
import { randomBytes } from 'node:crypto'

/** Longest Via pullcache passes on: a chain longer than this is a loop or an attack. */
const MAX_VIA = 2048

export class Via {
  /** This process's pseudonym in Via: unique per process, so two nodes on one host differ. */
  readonly id: string
  private readonly entry: string
  private readonly incoming = new AsyncLocalStorage<{ chain: string; relayed: boolean }>()

  constructor(id = `pullcache-${randomBytes(6).toString('hex')}`) {
    this.id = id
    this.entry = `1.1 ${id}`
  }

  /** Whether a received Via header names this process: the request went round a loop. */
  isLoop(header: string | undefined): boolean {
    if (header === undefined) return false
    if (header.length > MAX_VIA) return true
    return header.split(',').some((hop) => hop.trim().split(/\s+/)[1] === this.id)
  }

  /**
   * Runs `work` (a request's handling) so that what it sends upstream carries `header`;
   * `relayed`: the request came from another node of the cluster.
   */
  within<T>(header: string, relayed: boolean, work: () => T): T {
    return this.incoming.run({ chain: header, relayed }, work)
  }

  /** The Via for a request sent upstream now. */
  outgoing(): string {
    const before = this.incoming.getStore()?.chain
    return before === undefined || before === '' ? this.entry : `${before}, ${this.entry}`
  }

  /** Whether the request being answered was relayed here by another node of the cluster. */
  relayed(): boolean {
    return this.incoming.getStore()?.relayed === true
  }
}
