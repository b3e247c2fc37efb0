// What the mirror answers the routes with: a manifest, a blob (a stored file, a fill in
// progress, only upstream's size for a HEAD, or a URL of the bucket's copy to redirect to), a tag list, each saying where it came from
// (Outcome: hit, miss, coalesced onto another request's fetch, or stale). And the other kind of
// answer: an upstream failure as the registry error a client gets. Shared by the blob and
// manifest lookups, the mirror and http/, so it sits below all of them.

import { UpstreamError } from '../errors.js'
import type { BlobHandle } from '../store/blob-storage.js'
import type { CacheResult } from '../store/index-db.js'
import type { Fill } from './blob-fill.js'

export type Outcome = Exclude<CacheResult, 'error'>

export interface ManifestAnswer {
  digest: string
  mediaType: string
  size: number
  /** Absent only for a HEAD that upstream answered and we did not download. */
  bytes: Buffer | undefined
  cache: Outcome
  /** An answer by tag: when upstream last confirmed the tag (a tier below gets it as Age). */
  checkedAt?: number
}

export type BlobAnswer =
  | { kind: 'file'; handle: BlobHandle; size: number; allocated: number; cache: Outcome; release: () => void }
  // 'hit': filled from the shared tier (the bucket), not from upstream.
  | { kind: 'fill'; fill: Fill; cache: 'hit' | 'miss' | 'coalesced' }
  | { kind: 'remote'; size: number; cache: 'miss' }
  // A GET the bucket answers: the client is sent to this presigned URL (the offload).
  | { kind: 'redirect'; url: string; cache: 'hit' }

export interface TagListAnswer {
  bytes: Buffer
  link: string | null
  cache: Outcome
}

export function asRegistryError(
  err: unknown,
  notFound: 'BLOB_UNKNOWN' | 'MANIFEST_UNKNOWN' | 'NAME_UNKNOWN',
): Error {
  if (err instanceof UpstreamError) return err.toRegistryError(notFound)
  return err as Error
}
