// The member board (store/member-board.ts) on an S3-compatible bucket. The bucket's time of a
// LIST comes from its answer's Date header, which the SDK does not hand out: a deserialize
// middleware on that one command reads it off the raw response.

import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3'
import { type BoardEntry, type Heartbeat, type MemberBoard, membersPrefix } from './member-board.js'
import { createS3Client, isMissing } from './s3-client.js'
import type { BucketSettings } from './shared-tier.js'

export class S3MemberBoard implements MemberBoard {
  private readonly client: S3Client
  private readonly bucket: string
  private readonly folder: string
  /**
   * Heartbeats read before, by node id: a node's id is derived from its URL, so only a new id
   * costs a GET; a LIST a round is all the rest costs.
   */
  private readonly known = new Map<string, Heartbeat>()

  constructor(settings: BucketSettings) {
    this.client = createS3Client(settings)
    this.bucket = settings.bucket
    this.folder = membersPrefix(settings.prefix)
  }

  async beat(nodeId: string, heartbeat: Heartbeat): Promise<void> {
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: this.folder + nodeId,
        Body: JSON.stringify(heartbeat),
        ContentType: 'application/json',
      }),
    )
  }

  async read(): Promise<{ now: Date; entries: BoardEntry[] }> {
    const listed: { nodeId: string; lastModified: Date }[] = []
    let now: Date | undefined
    let token: string | undefined
    do {
      const command = new ListObjectsV2Command({
        Bucket: this.bucket,
        Prefix: this.folder,
        ContinuationToken: token,
      })
      command.middlewareStack.add(
        (next) => async (args) => {
          const result = await next(args)
          const date = (result.response as { headers?: Record<string, string> }).headers?.date
          if (date !== undefined && !Number.isNaN(Date.parse(date))) now = new Date(date)
          return result
        },
        { step: 'deserialize', name: 'pullcacheListDate' },
      )
      const page: ListObjectsV2CommandOutput = await this.client.send(command)
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined || object.LastModified === undefined) continue
        listed.push({ nodeId: object.Key.slice(this.folder.length), lastModified: object.LastModified })
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined
    } while (token !== undefined)
    if (now === undefined) throw new Error('the bucket answered a LIST without a Date header')
    const ids = new Set(listed.map((e) => e.nodeId))
    for (const id of [...this.known.keys()]) if (!ids.has(id)) this.known.delete(id)
    const entries = await Promise.all(
      listed.map(async (e) => {
        let heartbeat = this.known.get(e.nodeId)
        if (heartbeat === undefined) {
          heartbeat = await this.heartbeat(e.nodeId)
          if (heartbeat !== undefined) this.known.set(e.nodeId, heartbeat)
        }
        return { ...e, heartbeat }
      }),
    )
    return { now, entries }
  }

  async remove(nodeId: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.folder + nodeId }))
  }

  close(): void {
    this.client.destroy()
  }

  private async heartbeat(nodeId: string): Promise<Heartbeat | undefined> {
    try {
      const res = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.folder + nodeId }),
      )
      const parsed = JSON.parse((await res.Body?.transformToString()) ?? '') as Partial<Heartbeat>
      if (typeof parsed.url !== 'string') return undefined
      return {
        url: parsed.url,
        startedAt: String(parsed.startedAt ?? ''),
        version: String(parsed.version ?? ''),
      }
    } catch (err) {
      // Removed between the LIST and the GET, or not JSON: not a member this round.
      if (isMissing(err) || err instanceof SyntaxError) return undefined
      throw err
    }
  }
}
