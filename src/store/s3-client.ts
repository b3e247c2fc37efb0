// The S3 client and what pullcache learns about a bucket at start: whether it exists (created
// when missing), and what the store behind it can do. Stores differ: AWS S3, MinIO, Ceph RGW
// and R2 refuse a PUT with If-None-Match: * over an existing object; stock Swift's S3 API
// answers 501 to any conditional PUT; some accept the header and ignore it, overwriting. Only a
// 412 where one is due counts as support, so code that uses conditional writes never trusts a
// store that only looked as if it did. Presigned GETs count only when one was fetched and
// answered the object's bytes (store/s3-presign.ts).

import { randomBytes } from 'node:crypto'
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3'
import type { BucketCapabilities, BucketSettings } from './shared-tier.js'

/**
 * A client for `settings`. Checksums only where the API requires them: stores other than AWS
 * (Swift, older MinIO) do not all take the SDK's default CRC32 trailers on streamed bodies, and
 * every blob is verified by sha256 anyway. Timeouts are short enough that an unreachable bucket
 * costs a request a couple of seconds, not a hang: the hot tier and upstream serve meanwhile.
 */
export function createS3Client(settings: BucketSettings): S3Client {
  return new S3Client({
    ...(settings.endpoint === null ? {} : { endpoint: settings.endpoint }),
    region: settings.region,
    forcePathStyle: settings.forcePathStyle,
    // A copy: the SDK marks the object it is given (a $source field), and the config is frozen.
    ...(settings.credentials === null ? {} : { credentials: { ...settings.credentials } }),
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 2,
    // An idle limit, not a total one: a blob of gigabytes streams for minutes, and must.
    requestHandler: { connectionTimeout: 2000, socketTimeout: 30_000 },
  })
}

/** The HTTP status of an SDK error, or undefined for one that never got an answer. */
export function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode
}

/** Whether an SDK error says the key (or bucket) is not there. */
export function isMissing(err: unknown): boolean {
  const name = (err as { name?: unknown } | null)?.name
  return statusOf(err) === 404 || name === 'NoSuchKey' || name === 'NotFound'
}

/** HeadBucket, and CreateBucket when it is missing; true when this call created it. */
export async function ensureBucket(client: S3Client, bucket: string): Promise<boolean> {
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }))
    return false
  } catch (err) {
    if (!isMissing(err)) throw err
  }
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }))
    return true
  } catch (err) {
    // Another node created it between the two calls.
    const name = (err as { name?: unknown }).name
    if (name === 'BucketAlreadyOwnedByYou' || name === 'BucketAlreadyExists') return false
    throw err
  }
}

/**
 * Writes a small probe object under `<prefix>probe/`, tries the conditional writes against it,
 * and removes it. Each capability is true only when the store refused what it had to refuse
 * and allowed what it had to allow, and the object held what it should afterwards.
 */
export async function probeCapabilities(
  client: S3Client,
  bucket: string,
  prefix: string,
  presignedGet: (key: string, expected: string) => Promise<boolean>,
): Promise<BucketCapabilities> {
  const Key = `${prefix}probe/${randomBytes(8).toString('hex')}`
  const put = (Body: string, extra: { IfNoneMatch?: string; IfMatch?: string } = {}) =>
    client.send(new PutObjectCommand({ Bucket: bucket, Key, Body, ...extra }))
  const content = async () => {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key }))
    return (await res.Body?.transformToString()) ?? ''
  }
  const refused = async (attempt: Promise<unknown>) => {
    try {
      await attempt
      return false
    } catch (err) {
      if (statusOf(err) === 412) return true
      // 501 NotImplemented, 400: the store does not do it; anything else is no answer either.
      return false
    }
  }
  try {
    const first = await put('v1')
    // First, while the object still holds what was written: the other tests rewrite it.
    const presigned = await presignedGet(Key, 'v1')
    const conditionalCreate = (await refused(put('v2', { IfNoneMatch: '*' }))) && (await content()) === 'v1'
    let conditionalReplace = false
    let ifMatchBare = false
    // The ETag as returned first (quoted, as S3 sends it), then without its quotes: Ceph RGW 16
    // refuses every quoted one, so only the bare form tells whether it compares at all.
    for (const bare of [false, true]) {
      if (first.ETag === undefined || conditionalReplace) break
      const form = (etag: string) => (bare ? etag.replace(/"/g, '') : etag)
      const { ETag } = bare ? await put('v1') : first
      if (ETag === undefined) break
      const wrongRefused = await refused(put('v3', { IfMatch: form('"00000000000000000000000000000000"') }))
      let rightTaken = false
      if (wrongRefused) {
        try {
          await put('v4', { IfMatch: form(ETag) })
          rightTaken = (await content()) === 'v4'
        } catch {
          rightTaken = false
        }
      }
      conditionalReplace = wrongRefused && rightTaken
      ifMatchBare = bare && conditionalReplace
    }
    return { conditionalCreate, conditionalReplace, ifMatchBare, presignedGet: presigned }
  } finally {
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key })).catch(() => {})
  }
}
