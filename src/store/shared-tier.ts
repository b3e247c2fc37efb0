// The shared tier: blobs in an S3-compatible bucket, behind the local store. The local data dir
// stays what it is (the hot tier and the node's index: synchronous looks, positional reads,
// the budget); the bucket holds what must outlive a node and what other nodes may serve.
//
//   read   local hot tier -> bucket (fetched through the mirror's fill, verified again and
//          admitted to the hot tier) -> upstream
//   fill   upstream -> verified local commit (clients released) -> published to the bucket from
//          the committed file, behind the clients, completed only when its sha256 and size match
//   offload (storage.s3.redirect) a GET of a blob the bucket holds, past the access checks and
//          with no fill of it running -> 307 to a presigned URL of its object, signed for the
//          public endpoint, valid for the ttl; the client fetches the bytes there
//
// Layout in the bucket, drawn once here (keys are built in bucketKey()):
//
//   <prefix>blobs/sha256/<first 2 hex>/<64 hex>    complete and verified, or absent;
//                                                   x-amz-meta-fetched: "anonymous" when the
//                                                   node fetched it without an upstream account
//   <prefix>manifests/sha256/<first 2 hex>/<64 hex>  a manifest's body, put only after it hashed
//                                                   to the digest; its media type in
//                                                   x-amz-meta-media-type, the same fetched mark
//
// Tags are not in the bucket: a tag's owner in the cluster asks upstream once per window and the
// others follow its answer (with Age), so a record in the bucket would add nothing but staleness.
// That mark is what lets a node that never fetched a blob hand it to an anonymous client: a
// blob some node fetched with an upstream account may be private, so without the mark the
// mirror's visibility rules ask upstream, as they do for any blob of unknown origin.
// A blob object is never half-written: a multipart upload is completed (or a small blob PUT)
// only after the bytes read back from the committed file hashed to the digest; anything else
// aborts it, and a janitor aborts uploads a dead process left behind. "Not in the bucket" is a
// miss whatever the index says, and a duplicate publish writes identical bytes, so nothing
// here depends on a lock or on conditional writes.
//
// The AWS SDK is loaded only when S3 storage is configured (store/shared-tier-start.ts imports
// store/s3-storage.ts dynamically), so a node on local storage never holds it in memory.

import type { Readable } from 'node:stream'

/** What a start-up probe found the store can do; conditional writes are used only where true. */
export interface BucketCapabilities {
  /** PUT with If-None-Match: * refuses to replace an object (412). */
  conditionalCreate: boolean
  /** PUT with If-Match: <etag> replaces only that version (and refuses another). */
  conditionalReplace: boolean
  /**
   * If-Match takes the ETag without its quotes (Ceph RGW 16 matches only that form and refuses
   * the quoted one); undefined or false: as the store returned it.
   */
  ifMatchBare?: boolean
  /** A presigned GET URL reads the object without other credentials. */
  presignedGet: boolean
}

export interface BucketSettings {
  endpoint: string | null
  bucket: string
  prefix: string
  region: string
  forcePathStyle: boolean
  credentials: { accessKeyId: string; secretAccessKey: string } | null
  /** Where clients reach the bucket, for presigned URLs; null: the endpoint. */
  publicEndpoint: string | null
  /** How long a presigned URL handed out to a client works; null: redirects are off. */
  redirectTtlSeconds: number | null
}

export interface SharedTier {
  /** Where the tier is, for logs and stats: never credentials. */
  readonly describe: { type: 's3'; endpoint: string | null; bucket: string; prefix: string }
  /** The last probe's findings, or undefined before (or without) a successful one. */
  readonly capabilities: BucketCapabilities | undefined
  /**
   * Creates the bucket when it is missing (and the keys may), then probes what it can do, with a
   * small object of its own that it removes. Rejects when the bucket cannot be reached.
   */
  start(): Promise<{ created: boolean; capabilities: BucketCapabilities }>
  /** A blob's size in the bucket and whether it was fetched anonymously, or undefined. */
  stat(digest: string): Promise<SharedStat | undefined>
  /** A blob's bytes from the bucket, or undefined when it is not there; `signal` aborts it. */
  get(digest: string, signal: AbortSignal): Promise<{ body: Readable; size: number } | undefined>
  /**
   * Publishes a committed local blob: reads it, hashes what it reads, and completes the object
   * only when sha256 and size match; aborts the upload otherwise. Resolves whether it published
   * or was already there; rejects (after the abort) when it could not. With `replace`, an object
   * already there is written over (its bytes did not verify). `anonymous`: fetched without an
   * upstream account (see the layout above).
   */
  publish(
    digest: string,
    source: PublishSource,
    opts: { replace?: boolean; anonymous: boolean },
  ): Promise<'published' | 'present'>
  /** With redirects on: the host (no port) presigned URLs send clients to; else undefined. */
  readonly redirectHost: string | undefined
  /**
   * A URL that GETs the blob's object with no other credentials, signed for the public endpoint
   * and valid for the redirect ttl. Says nothing of whether the object is there: stat() first.
   * Rejects when redirects are off.
   */
  presignGet(digest: string): Promise<string>
  /** A manifest's body and media type by digest, or undefined; the caller verifies the body. */
  getManifest(digest: string, signal?: AbortSignal): Promise<SharedManifest | undefined>
  /** Whether a manifest is in the bucket, and fetched anonymously; undefined when absent. */
  statManifest(digest: string): Promise<{ anonymous: boolean } | undefined>
  /**
   * Puts a manifest's body, after checking that it hashes to `digest` (BlobMismatch otherwise).
   * Like publish(): 'present' when an object is there already, unless `replace`.
   */
  publishManifest(
    digest: string,
    body: Buffer,
    opts: { mediaType: string; replace?: boolean; anonymous: boolean },
  ): Promise<'published' | 'present'>
  /** Aborts multipart uploads under the prefix started more than `olderThanMs` ago; how many. */
  abortStaleUploads(olderThanMs: number): Promise<number>
  /** Lets go of connections. */
  close(): void
}

export interface SharedStat {
  size: number
  /** Fetched without an upstream account: anonymous pulls may read it. */
  anonymous: boolean
}

/** A manifest as the bucket holds it, not yet verified. */
export interface SharedManifest {
  body: Buffer
  mediaType: string
  /** Fetched without an upstream account: anonymous pulls may read it. */
  anonymous: boolean
}

/** The object metadata that marks a blob fetched without an upstream account. */
export const FETCHED_ANONYMOUSLY = { fetched: 'anonymous' } as const

/** A committed local blob to publish: its size, and positional reads of its bytes. */
export interface PublishSource {
  size: number
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>
}

/** The bucket's key of a blob under `prefix` (which ends in '/' when not empty). */
export function bucketKey(prefix: string, digest: string): string {
  const hex = digest.slice('sha256:'.length)
  if (!digest.startsWith('sha256:') || !/^[0-9a-f]{64}$/.test(hex))
    throw new Error(`not a sha256 digest: ${digest}`)
  return `${prefix}blobs/sha256/${hex.slice(0, 2)}/${hex}`
}

/** The bucket's key of a manifest body under `prefix`, beside the blobs (see the layout above). */
export function manifestKey(prefix: string, digest: string): string {
  return `${prefix}manifests/${bucketKey('', digest).slice('blobs/'.length)}`
}
