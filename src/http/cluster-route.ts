// GET /_pullcache/cluster: what this node knows of its cluster, for the other nodes and for
// `pullcache cluster check`: its own URL, the nodes it counts (which answer, and how each was
// found: static list, DNS, bucket heartbeats), its version.
// Only a caller with the cluster secret gets it: it names every node's internal address.
// GET /_pullcache/cluster/stats: this node's own figures, which the others sum into the
// cluster's totals (src/cluster/totals.ts).

import { type Context, Hono } from 'hono'
import type { NodeFigures } from '../cluster/figures.js'
import type { Membership, MemberView } from '../cluster/membership.js'
import { RegistryError } from '../errors.js'
import type { BucketBudgetReport } from '../store/bucket-objects.js'
import type { BucketCapabilities } from '../store/shared-tier.js'
import type { Store } from '../store/store.js'
import { VERSION } from '../version.js'
import { PEER, type RegistryEnv } from './access.js'

export const CLUSTER_PATH = '/cluster'

export interface ClusterView {
  node_url: string
  version: string
  members: MemberView[]
  /** The bucket's budget as this node sees it (storage.s3.max_size), when there is one. */
  bucket_budget?: BucketBudgetReport
  /**
   * The bucket this node keeps blobs in, and what its start-up probe found the store can do
   * (null: the probe has not succeeded); absent on local storage. Nodes of one cache share it.
   */
  bucket?: {
    endpoint: string | null
    bucket: string
    prefix: string
    capabilities: BucketCapabilities | null
  }
}

export function clusterRoutes(
  membership: Membership | undefined,
  ownFigures: () => Promise<NodeFigures>,
  store?: Store,
): Hono<RegistryEnv> {
  const routes = new Hono<RegistryEnv>()
  const peersOnly = (c: Context<RegistryEnv>) => {
    if (membership === undefined)
      throw new RegistryError('NOT_FOUND', { reason: 'this node is not in a cluster' })
    if (c.get('viewer') !== PEER)
      throw new RegistryError('DENIED', { reason: 'the cluster secret is required' })
    return membership
  }
  routes.get(CLUSTER_PATH, (c) => {
    const members = peersOnly(c)
    const view: ClusterView = {
      node_url: members.self,
      version: VERSION,
      members: members.members(),
      ...(store?.bucket.sharedBudget === undefined ? {} : { bucket_budget: store.bucket.sharedBudget() }),
      ...(store?.shared === undefined
        ? {}
        : {
            bucket: {
              endpoint: store.shared.describe.endpoint,
              bucket: store.shared.describe.bucket,
              prefix: store.shared.describe.prefix,
              capabilities: store.shared.capabilities ?? null,
            },
          }),
    }
    return c.json(view)
  })
  routes.get(`${CLUSTER_PATH}/stats`, async (c) => {
    peersOnly(c)
    return c.json(await ownFigures(), 200, { 'Cache-Control': 'no-store' })
  })
  return routes
}
