// What eviction keeps the store to (store/eviction.ts carries it out): the byte budget with its
// high and low marks, the age after which unused content goes, the pins, and each registry's
// share of the budget (upstreams[i].budget_share), made from the config.

import type { Config, TagPattern } from '../config.js'
import { namePrefixOf, registryKeyOf } from '../oci.js'

export interface EvictionPolicy {
  maxSize: number | null
  highWater: number
  lowWater: number
  maxUnusedAgeMs: number | null
  pins: readonly TagPattern[]
  /**
   * Registries with a budget share (upstreams[i].budget_share): the blobs only their
   * repositories use (names under `prefix`, index key `registry`) may take `bytes` on disk.
   */
  shares?: readonly BudgetShare[]
}

export interface BudgetShare {
  registry: string
  prefix: string
  bytes: number
}

/**
 * The budget shares of the config's other registries: their repositories are named under
 * "<host>/" in the index, under the root upstream's key (its URL's host), as mirror/mirrors.ts
 * keeps them.
 */
export function budgetShares(config: Config): { registry: string; prefix: string; share: number }[] {
  const registry = registryKeyOf(config.upstream.url)
  return config.upstreams.flatMap((u) =>
    u.budget_share === undefined ? [] : [{ registry, prefix: namePrefixOf(u.host), share: u.budget_share }],
  )
}

/** `shares`: each registry's budget_share of cache.max_size, by its names' prefix. */
export function policyFrom(
  cache: {
    max_size: number | null
    high_water: number
    low_water: number
    max_unused_age: number | null
    pins: readonly TagPattern[]
  },
  shares: readonly { registry: string; prefix: string; share: number }[] = [],
): EvictionPolicy {
  const maxSize = cache.max_size
  return {
    maxSize,
    highWater: cache.high_water,
    lowWater: cache.low_water,
    maxUnusedAgeMs: cache.max_unused_age,
    pins: cache.pins,
    shares:
      maxSize === null
        ? []
        : shares.map((s) => ({
            registry: s.registry,
            prefix: s.prefix,
            bytes: Math.floor(maxSize * s.share),
          })),
  }
}
