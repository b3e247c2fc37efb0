// What eviction never takes: the manifests of pinned tags ("repo:tag" patterns, cache.pins) and
// everything they reference, down through indexes to the layers.

import type { TagPattern } from '../config.js'
import { type EvictionQueries, TAG_PAGE, type TagKey } from './index-eviction.js'

/** Digests of pinned tags' manifests and everything they reference, recursively. */
export function pinnedDigests(queries: EvictionQueries, pins: readonly TagPattern[]): Set<string> {
  if (pins.length === 0) return new Set()
  const roots: string[] = []
  for (const t of queries.allTags()) {
    if (pins.some((p) => p.test(t.repo, t.tag))) roots.push(t.digest)
  }
  return withReferences(queries, roots)
}

/**
 * The same for the server: tags are read in pages (keyset on the primary key) with a yield
 * between pages, so a hundred thousand tags do not stall requests while patterns are tested.
 */
export async function pinnedDigestsPaged(
  queries: EvictionQueries,
  pins: readonly TagPattern[],
): Promise<Set<string>> {
  if (pins.length === 0) return new Set()
  const roots: string[] = []
  let after: TagKey = { registry: '', repo: '', tag: '' }
  for (;;) {
    const rows = queries.tagPage(after)
    for (const t of rows) {
      if (pins.some((p) => p.test(t.repo, t.tag))) roots.push(t.digest)
    }
    if (rows.length < TAG_PAGE) break
    const last = rows.at(-1)!
    after = { registry: last.registry, repo: last.repo, tag: last.tag }
    await new Promise((resolve) => setImmediate(resolve))
  }
  return withReferences(queries, roots)
}

/** Manifests and everything they reference, down through indexes. */
function withReferences(queries: EvictionQueries, roots: string[]): Set<string> {
  const pinned = new Set<string>()
  const stack = [...roots]
  while (stack.length > 0) {
    const digest = stack.pop()!
    if (pinned.has(digest)) continue
    pinned.add(digest)
    for (const child of queries.children(digest)) stack.push(child)
  }
  return pinned
}
