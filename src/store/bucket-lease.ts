// The evictor's lease: an object `<prefix>evictor` written with compare-and-swap, so that two
// nodes never delete from the bucket at once even while they disagree on who the evictor is.
// Used only where the start-up probe found conditional create and replace atomic; elsewhere
// (Swift's S3 API) ownership of the key `evictor` alone decides, and a second evictor costs no
// data: it deletes only least recently used blobs past their grace, as the first would.
//
// Expiry needs no agreement on clocks: a node that sees the same ETag for longer than the
// lease's time, by its own clock, takes the lease over. The holder rewrites the object (a new
// ETag) at every run and before every delete batch.

import type { BucketObjects } from './bucket-objects.js'

export class BucketLease {
  private readonly objects: BucketObjects
  private readonly key: string
  private readonly nodeId: string
  private readonly ttlMs: number
  /** The ETag this node wrote last, while it believes it holds the lease. */
  private held: string | undefined
  /** Another holder's ETag and when this node first saw it. */
  private seen: { etag: string; at: number } | undefined
  private renewals = 0

  constructor(opts: { objects: BucketObjects; prefix: string; nodeId: string; ttlMs: number }) {
    this.objects = opts.objects
    this.key = `${opts.prefix}evictor`
    this.nodeId = opts.nodeId
    this.ttlMs = opts.ttlMs
  }

  /** Takes or renews the lease; false when another node holds it (or won the race for it). */
  async acquire(now = Date.now()): Promise<boolean> {
    const body = () => JSON.stringify({ node: this.nodeId, renewal: ++this.renewals, at: now })
    const current = await this.objects.read(this.key)
    if (current === undefined) {
      this.held = await this.objects.write(this.key, body(), { ifNoneMatch: '*' })
      return this.held !== undefined
    }
    const holder = holderOf(current.text)
    const mine = holder === this.nodeId
    if (!mine) {
      if (this.seen?.etag !== current.etag) {
        this.seen = { etag: current.etag, at: now }
        this.held = undefined
        return false
      }
      if (now - this.seen.at < this.ttlMs) return false
    }
    // Ours (from this process or the one before it with this node's id), or expired.
    this.held = await this.objects.write(this.key, body(), { ifMatch: current.etag })
    if (this.held === undefined) return false
    this.seen = undefined
    return true
  }

  /** Whether this node wrote the lease last, as far as it knows. */
  get holding(): boolean {
    return this.held !== undefined
  }
}

function holderOf(text: string): string | undefined {
  try {
    const node = (JSON.parse(text) as { node?: unknown }).node
    return typeof node === 'string' ? node : undefined
  } catch {
    return undefined
  }
}
