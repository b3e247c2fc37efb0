// Small objects in the bucket beside the blobs, for the jobs that keep the bucket to its budget
// (store/bucket-eviction.ts): listings with exact sizes, the access journals, the evictor's
// lease and its last run. An interface here, so those jobs never load the AWS SDK themselves;
// store/s3-bucket-objects.ts implements it, loaded by store/shared-tier-start.ts.

export interface ListedObject {
  key: string
  size: number
  /** ms since epoch, by the store's clock. */
  lastModified: number
}

/** How a conditional write may be refused: it was not written, and nothing else changed. */
export type Condition = { ifNoneMatch: '*' } | { ifMatch: string }

export interface BucketObjects {
  /** Every object under `prefix` (a full key prefix), a page at a time. */
  list(prefix: string): AsyncIterable<ListedObject[]>
  /** A small object's text and ETag, or undefined when it is not there. */
  read(key: string): Promise<{ text: string; etag: string } | undefined>
  /**
   * Writes a small object; with a condition, resolves undefined when the store refused it (412,
   * or a 500 from Ceph RGW for a compare-and-swap another writer won), else the new ETag.
   */
  write(key: string, text: string, condition?: Condition): Promise<string | undefined>
  /** Deletes these keys (missing ones are fine). */
  remove(keys: readonly string[]): Promise<void>
  close(): void
}

/** The budget as the stats and `cluster check` show it. */
export interface BucketBudgetReport {
  max_size: number | null
  high_water: number
  low_water: number
  grace_seconds: number
  /** Whether this node is the one that evicts (owns the key `evictor`). */
  evictor: boolean
  /** Whether eviction also holds a lease object (the store does atomic conditional writes). */
  lease: boolean
  /** The last run any node recorded, as far as this node knows: bucket bytes and objects then. */
  last_run: {
    node: string
    at: string
    bytes: number
    objects: number
    deleted: number
    freed_bytes: number
  } | null
}
