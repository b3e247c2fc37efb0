// Blobs in an S3-compatible bucket: the shared tier (store/shared-tier.ts draws the layout and
// the flow). Only this module and store/s3-client.ts import the AWS SDK, and only
// openSharedTier() imports them, when S3 storage is configured.

import { createHash } from 'node:crypto'
import type { Readable } from 'node:stream'
import {
  AbortMultipartUploadCommand,
  type CompletedPart,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3'
import { MAX_MANIFEST_BYTES, sha256 } from '../oci.js'
import { BlobMismatch } from './blob-storage.js'
import { createS3Client, ensureBucket, isMissing, probeCapabilities } from './s3-client.js'
import { createPresigner, type Presigner, probePresignedGet } from './s3-presign.js'
import {
  type BucketCapabilities,
  type BucketSettings,
  bucketKey,
  FETCHED_ANONYMOUSLY,
  manifestKey,
  type PublishSource,
  type SharedManifest,
  type SharedStat,
  type SharedTier,
} from './shared-tier.js'

/**
 * Parts of a multipart upload. S3 wants at least 5 MiB for every part but the last and allows
 * 10 000 parts, so 16 MiB parts take blobs up to 160 GB; a blob no bigger than one part is a
 * single PUT. One part is in memory at a time per publish.
 */
export const PART_SIZE = 16 * 1024 * 1024
/** Bytes read from the local file per read while a part is gathered. */
const READ_CHUNK = 1024 * 1024
/** The object metadata (x-amz-meta-media-type) that holds a manifest's media type. */
const MEDIA_TYPE_META = 'media-type'

export class S3Tier implements SharedTier {
  readonly describe: SharedTier['describe']
  capabilities: BucketCapabilities | undefined
  private readonly client: S3Client
  private readonly bucket: string
  private readonly prefix: string
  private readonly presigner: Presigner
  private readonly redirectTtlSeconds: number | null
  readonly redirectHost: string | undefined

  constructor(settings: BucketSettings) {
    this.client = createS3Client(settings)
    this.bucket = settings.bucket
    this.prefix = settings.prefix
    this.presigner = createPresigner(settings)
    this.redirectTtlSeconds = settings.redirectTtlSeconds
    this.redirectHost = settings.redirectTtlSeconds === null ? undefined : this.presigner.host
    this.describe = {
      type: 's3',
      endpoint: settings.endpoint,
      bucket: settings.bucket,
      prefix: settings.prefix,
    }
  }

  async start(): Promise<{ created: boolean; capabilities: BucketCapabilities }> {
    const created = await ensureBucket(this.client, this.bucket)
    this.capabilities = await probeCapabilities(this.client, this.bucket, this.prefix, (key, expected) =>
      probePresignedGet(this.presigner, key, expected),
    )
    return { created, capabilities: this.capabilities }
  }

  async stat(digest: string): Promise<SharedStat | undefined> {
    try {
      const res = await this.client.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: bucketKey(this.prefix, digest) }),
      )
      if (res.ContentLength === undefined) return undefined
      return { size: res.ContentLength, anonymous: res.Metadata?.fetched === FETCHED_ANONYMOUSLY.fetched }
    } catch (err) {
      if (isMissing(err)) return undefined
      throw err
    }
  }

  async get(digest: string, signal: AbortSignal): Promise<{ body: Readable; size: number } | undefined> {
    try {
      const res = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: bucketKey(this.prefix, digest) }),
        { abortSignal: signal },
      )
      // In Node the SDK's body is the response stream itself (an IncomingMessage).
      const body = res.Body as Readable | undefined
      if (body === undefined || res.ContentLength === undefined) {
        body?.destroy()
        throw new Error(`bucket answered GET of ${digest} without a body or a length`)
      }
      return { body, size: res.ContentLength }
    } catch (err) {
      if (isMissing(err)) return undefined
      throw err
    }
  }

  async publish(
    digest: string,
    source: PublishSource,
    opts: { replace?: boolean; anonymous: boolean },
  ): Promise<'published' | 'present'> {
    // Another node may have published it already; identical bytes either way, so a HEAD saves
    // the upload. Not when the object there is known not to verify, nor to mark as anonymous
    // an object whose bytes were (also) fetched with an account.
    const there = opts.replace ? undefined : await this.stat(digest)
    if (there?.size === source.size && (there.anonymous || !opts.anonymous)) return 'present'
    const key = bucketKey(this.prefix, digest)
    const Metadata: Record<string, string> = opts.anonymous ? { ...FETCHED_ANONYMOUSLY } : {}
    if (source.size <= PART_SIZE) {
      const hash = createHash('sha256')
      const body = await readPart(source, 0, source.size, hash)
      checkDigest(digest, hash, source.size, body.length)
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: body,
          ContentLength: body.length,
          Metadata,
        }),
      )
      return 'published'
    }
    const { UploadId } = await this.client.send(
      new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key, Metadata }),
    )
    if (UploadId === undefined) throw new Error(`bucket started no multipart upload for ${digest}`)
    try {
      const hash = createHash('sha256')
      const parts: CompletedPart[] = []
      let position = 0
      for (let PartNumber = 1; position < source.size; PartNumber++) {
        const body = await readPart(source, position, Math.min(PART_SIZE, source.size - position), hash)
        const { ETag } = await this.client.send(
          new UploadPartCommand({
            Bucket: this.bucket,
            Key: key,
            UploadId,
            PartNumber,
            Body: body,
            ContentLength: body.length,
          }),
        )
        parts.push({ ETag, PartNumber })
        position += body.length
      }
      // The only way an object appears: every byte sent hashed to the digest.
      checkDigest(digest, hash, source.size, position)
      await this.client.send(
        new CompleteMultipartUploadCommand({
          Bucket: this.bucket,
          Key: key,
          UploadId,
          MultipartUpload: { Parts: parts },
        }),
      )
      return 'published'
    } catch (err) {
      await this.client
        .send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId }))
        .catch(() => {}) // the janitor aborts it later
      throw err
    }
  }

  presignGet(digest: string): Promise<string> {
    if (this.redirectTtlSeconds === null) return Promise.reject(new Error('redirects are off'))
    return this.presigner.sign(bucketKey(this.prefix, digest), this.redirectTtlSeconds)
  }

  async getManifest(digest: string, signal?: AbortSignal): Promise<SharedManifest | undefined> {
    try {
      const res = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: manifestKey(this.prefix, digest) }),
        signal === undefined ? {} : { abortSignal: signal },
      )
      const body = res.Body as Readable | undefined
      const size = res.ContentLength ?? 0
      if (body === undefined) throw new Error(`bucket answered GET of manifest ${digest} without a body`)
      if (size > MAX_MANIFEST_BYTES) {
        // No manifest is that large: not what its key says, whatever it is.
        body.destroy()
        throw new BlobMismatch(digest, 'unread', size, MAX_MANIFEST_BYTES)
      }
      const chunks: Buffer[] = []
      for await (const chunk of body) chunks.push(chunk as Buffer)
      return {
        body: Buffer.concat(chunks),
        mediaType: res.Metadata?.[MEDIA_TYPE_META] ?? res.ContentType ?? '',
        anonymous: res.Metadata?.fetched === FETCHED_ANONYMOUSLY.fetched,
      }
    } catch (err) {
      if (isMissing(err)) return undefined
      throw err
    }
  }

  async statManifest(digest: string): Promise<{ anonymous: boolean } | undefined> {
    try {
      const res = await this.client.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: manifestKey(this.prefix, digest) }),
      )
      return { anonymous: res.Metadata?.fetched === FETCHED_ANONYMOUSLY.fetched }
    } catch (err) {
      if (isMissing(err)) return undefined
      throw err
    }
  }

  async publishManifest(
    digest: string,
    body: Buffer,
    opts: { mediaType: string; replace?: boolean; anonymous: boolean },
  ): Promise<'published' | 'present'> {
    const actual = sha256(body)
    if (actual !== digest) throw new BlobMismatch(digest, actual, body.length, body.length)
    // As for blobs: identical bytes either way, unless the object there is distrusted or lacks
    // the anonymous mark this copy may give it.
    const there = opts.replace ? undefined : await this.statManifest(digest)
    if (there !== undefined && (there.anonymous || !opts.anonymous)) return 'present'
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: manifestKey(this.prefix, digest),
        Body: body,
        ContentLength: body.length,
        ContentType: opts.mediaType,
        Metadata: {
          [MEDIA_TYPE_META]: opts.mediaType,
          ...(opts.anonymous ? FETCHED_ANONYMOUSLY : {}),
        },
      }),
    )
    return 'published'
  }

  async abortStaleUploads(olderThanMs: number): Promise<number> {
    const before = Date.now() - olderThanMs
    let aborted = 0
    let KeyMarker: string | undefined
    let UploadIdMarker: string | undefined
    for (;;) {
      const page = await this.client.send(
        new ListMultipartUploadsCommand({
          Bucket: this.bucket,
          Prefix: `${this.prefix}blobs/`,
          ...(KeyMarker === undefined ? {} : { KeyMarker }),
          ...(UploadIdMarker === undefined ? {} : { UploadIdMarker }),
        }),
      )
      for (const upload of page.Uploads ?? []) {
        if (upload.Key === undefined || upload.UploadId === undefined) continue
        if (upload.Initiated === undefined || upload.Initiated.getTime() >= before) continue
        await this.client.send(
          new AbortMultipartUploadCommand({
            Bucket: this.bucket,
            Key: upload.Key,
            UploadId: upload.UploadId,
          }),
        )
        aborted++
      }
      if (!page.IsTruncated) return aborted
      KeyMarker = page.NextKeyMarker
      UploadIdMarker = page.NextUploadIdMarker
    }
  }

  close(): void {
    this.client.destroy()
    this.presigner.close()
  }
}

/** `length` bytes of `source` from `position` into one buffer, hashed on the way. */
async function readPart(
  source: PublishSource,
  position: number,
  length: number,
  hash: ReturnType<typeof createHash>,
): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(length)
  let offset = 0
  while (offset < length) {
    const { bytesRead } = await source.read(
      buffer,
      offset,
      Math.min(READ_CHUNK, length - offset),
      position + offset,
    )
    if (bytesRead <= 0) throw new Error(`short read at ${position + offset} of ${length} bytes`)
    offset += bytesRead
  }
  hash.update(buffer)
  return buffer
}

function checkDigest(digest: string, hash: ReturnType<typeof createHash>, size: number, sent: number): void {
  const actual = `sha256:${hash.digest('hex')}`
  if (actual !== digest || sent !== size) throw new BlobMismatch(digest, actual, sent, size)
}
