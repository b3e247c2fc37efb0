// Opening the shared tier (store/shared-tier.ts) for a running server: the AWS SDK is imported
// here, dynamically, and only when S3 storage is configured; the bucket is created when missing,
// what the probe found is logged, and a janitor aborts multipart uploads a dead process left.

import type { Logger } from '../log.js'
import type { BucketObjects } from './bucket-objects.js'
import type { MemberBoard } from './member-board.js'
import type { BucketSettings, SharedTier } from './shared-tier.js'

/** Opens the S3 tier; the SDK is imported now, and only here. */
export async function openSharedTier(settings: BucketSettings): Promise<SharedTier> {
  const { S3Tier } = await import('./s3-storage.js')
  return new S3Tier(settings)
}

/**
 * The bucket's small objects (journals, lease, last run) for the budget's jobs, on a client of
 * their own; the SDK is imported here too, only when the bucket has a budget.
 */
export async function openBucketObjects(settings: BucketSettings, tier: SharedTier): Promise<BucketObjects> {
  const { S3BucketObjects } = await import('./s3-bucket-objects.js')
  return new S3BucketObjects(settings, () => tier.capabilities)
}

/** The shared tier as a running server holds it: opened, probed, its janitor scheduled. */
export interface RunningSharedTier {
  tier: SharedTier
  /**
   * Stops the janitor, waits for `publishesDone` up to `graceMs`, and lets go of the connections:
   * an upload still running then fails and is aborted (or left to the next janitor), and the
   * blob is published by the next node that fetches it.
   */
  close(publishesDone: Promise<void>, graceMs: number): Promise<void>
}

/** How often the janitor looks for abandoned multipart uploads. */
const JANITOR_INTERVAL_MS = 3_600_000

/**
 * Opens the bucket for a server: creates it when missing, logs what the probe found, and aborts
 * abandoned multipart uploads now and every hour. A bucket that cannot be reached does not stop
 * the start: the hot tier and upstream serve, and each request that would ask the bucket finds
 * out again (store.ts backs off meanwhile), so it is used as soon as it answers.
 */
export async function startSharedTier(
  settings: BucketSettings,
  opts: { log: Logger; abandonedUploadAgeMs: number },
): Promise<RunningSharedTier> {
  const { log } = opts
  const tier = await openSharedTier(settings)
  try {
    const { created, capabilities } = await tier.start()
    log.info('storage.bucket_ready', {
      ...tier.describe,
      created,
      conditional_create: capabilities.conditionalCreate,
      conditional_replace: capabilities.conditionalReplace,
      presigned_get: capabilities.presignedGet,
      redirect: tier.redirectHost === undefined ? 'off' : capabilities.presignedGet ? 'on' : 'unavailable',
    })
  } catch (err) {
    log.error('storage.bucket_unreachable', { ...tier.describe, error: err })
  }
  const janitor = () => {
    tier
      .abortStaleUploads(opts.abandonedUploadAgeMs)
      .then((aborted) => {
        if (aborted > 0) log.info('storage.uploads_aborted', { aborted })
      })
      .catch((err: unknown) => log.warn('store.bucket_failed', { op: 'janitor', error: err }))
  }
  janitor()
  const timer = setInterval(janitor, JANITOR_INTERVAL_MS)
  timer.unref()
  return {
    tier,
    async close(publishesDone, graceMs) {
      clearInterval(timer)
      let timeout: NodeJS.Timeout | undefined
      await Promise.race([publishesDone, new Promise((r) => (timeout = setTimeout(r, graceMs)))])
      clearTimeout(timeout)
      tier.close()
    },
  }
}

/** The bucket's settings from the storage section of the config. */
export function bucketSettings(storage: {
  s3: {
    endpoint: string | null
    bucket: string | null
    prefix: string
    region: string
    force_path_style: boolean
    redirect: { enabled: boolean; ttl: number; public_endpoint: string | null }
  }
  credentials: BucketSettings['credentials']
}): BucketSettings {
  const { s3 } = storage
  if (s3.bucket === null) throw new Error('S3 storage needs a bucket')
  return {
    endpoint: s3.endpoint,
    bucket: s3.bucket,
    prefix: s3.prefix,
    region: s3.region,
    forcePathStyle: s3.force_path_style,
    credentials: storage.credentials,
    publicEndpoint: s3.redirect.public_endpoint,
    redirectTtlSeconds: s3.redirect.enabled ? Math.floor(s3.redirect.ttl / 1000) : null,
  }
}

/** The heartbeats of the cluster's nodes in the bucket (cluster.peers_from_bucket); the SDK is imported now. */
export async function openMemberBoard(settings: BucketSettings): Promise<MemberBoard> {
  const { S3MemberBoard } = await import('./s3-members.js')
  return new S3MemberBoard(settings)
}
