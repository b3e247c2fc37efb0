// Presigned GET URLs of blob objects, for the offload: a client sent a 307 to one fetches the
// bytes from the bucket itself, and the node's network carries a redirect instead of the blob.
//
// A presigned URL is signed for a host (SigV4 signs the Host header), so it is made by a client
// of its own whose endpoint is the public one: the name clients reach the bucket at, which may
// not be the one this node uses. The URL carries the credentials' key id, the expiry and a
// signature; never the secret. Whoever holds the URL may read that one object until it expires,
// which is why it is handed out only after the access checks a normal GET passes, and lives
// minutes (storage.s3.redirect.ttl).
//
// Only this module imports the presigner, and only store/s3-storage.ts imports this module, so
// it is loaded with the rest of the SDK, when S3 storage is configured.

import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import { getSignedUrl } from '@aws-sdk/s3-request-presigner'
import { createS3Client } from './s3-client.js'
import type { BucketSettings } from './shared-tier.js'

/** Signs GET URLs for keys of one bucket, valid at the public endpoint. */
export interface Presigner {
  /** The host (no port) clients are sent to. */
  readonly host: string
  /** A URL that GETs `key` for `ttlSeconds` with no other credentials. */
  sign(key: string, ttlSeconds: number): Promise<string>
  close(): void
}

export function createPresigner(settings: BucketSettings): Presigner {
  const endpoint = settings.publicEndpoint ?? settings.endpoint
  const client: S3Client = createS3Client({ ...settings, endpoint })
  const host =
    endpoint === null
      ? // AWS S3 by region: virtual-hosted unless path style is forced.
        settings.forcePathStyle
        ? `s3.${settings.region}.amazonaws.com`
        : `${settings.bucket}.s3.${settings.region}.amazonaws.com`
      : new URL(endpoint).hostname
  return {
    host,
    sign: (key, ttlSeconds) =>
      getSignedUrl(client, new GetObjectCommand({ Bucket: settings.bucket, Key: key }), {
        expiresIn: ttlSeconds,
      }),
    close: () => client.destroy(),
  }
}

/** How long the probe waits for the presigned GET of its object. */
const PROBE_TIMEOUT_MS = 5_000

/**
 * Whether a presigned GET works as clients will use it: a URL for the probe object, signed for
 * the public endpoint, fetched with no other credentials (Node's fetch: what this node sees of
 * the public endpoint, which should be what clients see), must answer 200 with `expected`; and
 * the same URL with its signature altered must be refused, so that a URL is a pass that expires
 * rather than a bucket anyone can read. Any failure (no answer, another status, another body)
 * is a no.
 */
export async function probePresignedGet(
  presigner: Presigner,
  key: string,
  expected: string,
): Promise<boolean> {
  try {
    const url = await presigner.sign(key, 60)
    const good = await fetch(url, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) })
    const body = await good.text()
    if (good.status !== 200 || body !== expected) return false
    const forged = new URL(url)
    const signature = forged.searchParams.get('X-Amz-Signature')
    if (signature === null) return false
    forged.searchParams.set(
      'X-Amz-Signature',
      signature.replace(/^./, (c) => (c === '0' ? '1' : '0')),
    )
    const bad = await fetch(forged, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) })
    await bad.arrayBuffer()
    return bad.status === 403
  } catch {
    return false
  }
}
