// BucketObjects (store/bucket-objects.ts) on the AWS SDK, with a client of its own: loaded by
// store/shared-tier-start.ts only when S3 storage has a budget, like store/s3-storage.ts.

import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3'
import type { BucketObjects, Condition, ListedObject } from './bucket-objects.js'
import { createS3Client, isMissing, statusOf } from './s3-client.js'
import type { BucketCapabilities, BucketSettings } from './shared-tier.js'

/** Deletes running at once: DeleteObjects is not on every store (stock Swift), single ones are. */
const DELETES = 4

export class S3BucketObjects implements BucketObjects {
  private readonly client: S3Client
  private readonly bucket: string
  private readonly capabilities: () => BucketCapabilities | undefined

  constructor(settings: BucketSettings, capabilities: () => BucketCapabilities | undefined) {
    this.client = createS3Client(settings)
    this.bucket = settings.bucket
    this.capabilities = capabilities
  }

  async *list(prefix: string): AsyncIterable<ListedObject[]> {
    let ContinuationToken: string | undefined
    for (;;) {
      const page = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: prefix,
          ...(ContinuationToken === undefined ? {} : { ContinuationToken }),
        }),
      )
      const objects: ListedObject[] = []
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined) continue
        objects.push({ key: o.Key, size: o.Size ?? 0, lastModified: o.LastModified?.getTime() ?? 0 })
      }
      yield objects
      if (!page.IsTruncated || page.NextContinuationToken === undefined) return
      ContinuationToken = page.NextContinuationToken
    }
  }

  async read(key: string): Promise<{ text: string; etag: string } | undefined> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }))
      return { text: (await res.Body?.transformToString()) ?? '', etag: res.ETag ?? '' }
    } catch (err) {
      if (isMissing(err)) return undefined
      throw err
    }
  }

  async write(key: string, text: string, condition?: Condition): Promise<string | undefined> {
    const Body = Buffer.from(text)
    const extra =
      condition === undefined
        ? {}
        : 'ifNoneMatch' in condition
          ? { IfNoneMatch: '*' }
          : {
              IfMatch: this.capabilities()?.ifMatchBare
                ? condition.ifMatch.replace(/"/g, '')
                : condition.ifMatch,
            }
    try {
      const res = await this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: key, Body, ContentLength: Body.length, ...extra }),
      )
      return res.ETag ?? ''
    } catch (err) {
      const status = statusOf(err)
      // 412: the condition did not hold. Ceph RGW answers a compare-and-swap that another writer
      // won meanwhile with 500 (its ECANCELED); neither ever hides a write that happened.
      if (condition !== undefined && (status === 412 || status === 500)) return undefined
      // If-Match on a key that is not there: 404 on AWS (412 elsewhere), lost all the same.
      if (condition !== undefined && 'ifMatch' in condition && isMissing(err)) return undefined
      throw err
    }
  }

  async remove(keys: readonly string[]): Promise<void> {
    let next = 0
    const worker = async () => {
      while (next < keys.length) {
        const Key = keys[next++]!
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }))
      }
    }
    await Promise.all(Array.from({ length: Math.min(DELETES, keys.length) }, worker))
  }

  close(): void {
    this.client.destroy()
  }
}
