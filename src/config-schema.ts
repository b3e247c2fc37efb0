// The config's schema: every key, its default and the text forms it accepts, validated in one
// pass so an operator sees every problem at once, each with its path; unknown keys are errors,
// not silently ignored. The value types that parse text are config-fields.ts's. Where the values
// come from (file, environment, flags, secrets) is config.ts's.

import { z } from 'zod'
import {
  bucketEndpoint,
  DOCKER_HUB,
  duration,
  listen,
  network,
  nodeUrl,
  notifyEndpoint,
  nullableDuration,
  nullableSize,
  otherUpstream,
  registryHost,
  size,
  tagPattern,
  timerDuration,
  UPSTREAM_CONNECTION,
  upstreamUrl,
} from './config-fields.js'
import { redirectLeak } from './redirect-scope.js'

/**
 * A budget's marks in order (cache.* and storage.s3.*): checked even when other keys of the
 * section are wrong, so every problem is reported at once.
 */
const lowWaterBelowHigh: [
  (marks: { low_water: number; high_water: number }) => boolean,
  { message: string; path: string[]; when: (payload: { value: unknown }) => boolean },
] = [
  (marks: { low_water: number; high_water: number }) => marks.low_water < marks.high_water,
  {
    message: 'low_water must be below high_water',
    path: ['low_water'],
    when: ({ value }: { value: unknown }) => {
      const v = value as { low_water?: unknown; high_water?: unknown } | undefined
      return typeof v?.low_water === 'number' && typeof v.high_water === 'number'
    },
  },
]

const schema = z
  .strictObject({
    listen: listen.prefault(':5000'),
    data_dir: z.string().min(1).default('./data'),
    // Never contact upstream; uncached requests fail at once. Switchable at run time (SIGHUP).
    offline: z.boolean().default(false),
    // On SIGTERM: how long responses in flight may take to finish before connections are cut.
    // 0 is a choice: cut the connections at once.
    shutdown_grace: timerDuration().prefault('10s'),
    // The root upstream: what a request naming no other registry is for (dockerd's mirror).
    upstream: z
      .strictObject({
        // The registry name clients use for it (containerd's ?ns=, a path prefix).
        host: registryHost.default('docker.io'),
        url: upstreamUrl.prefault(DOCKER_HUB),
        ...UPSTREAM_CONNECTION,
        // Docker Hub keeps official images under library/: a one-component name ("alpine") is
        // asked for upstream as "library/alpine". Turn off for a registry with one-component names.
        library_prefix: z.boolean().default(true),
      })
      .prefault({}),
    // Further registries on the same port, each under its host name: `?ns=<host>` or a path
    // prefix `/v2/<host>/<name>` reaches it. Adding or removing one takes a restart.
    upstreams: z.array(otherUpstream).prefault([]),
    cache: z
      .strictObject({
        tag_freshness: duration.prefault('60s'),
        // How long a client with a cached copy waits on a tag revalidation before it gets the
        // cached copy, marked stale; the revalidation goes on and updates the tag when it ends.
        revalidate_timeout: timerDuration('serve every cached tag stale without waiting').prefault('5s'),
        manifest_memory: size.prefault('64MiB'),
        // Per-pattern freshness, first match wins; tags matching none get tag_freshness.
        tag_freshness_rules: z.array(z.strictObject({ match: tagPattern, freshness: duration })).prefault([]),
        // The store's byte budget (null: unlimited). Above high_water * max_size, the least
        // recently used blobs go until the store is under low_water * max_size.
        max_size: nullableSize.prefault(null),
        high_water: z.number().gt(0).max(1).default(0.95),
        low_water: z.number().gt(0).max(1).default(0.85),
        // Blobs and manifests unused this long are removed whatever the budget (null: never).
        max_unused_age: nullableDuration.prefault(null),
        // Never evicted, with everything their manifests reference: "repo:tag" patterns as above.
        pins: z.array(tagPattern).prefault([]),
        eviction_interval: timerDuration('run eviction in a busy loop').prefault('1m'),
      })
      .refine(...lowWaterBelowHigh)
      .prefault({}),
    // What one client connection may hold, and for how long (src/http/limits.ts).
    limits: z
      .strictObject({
        header_timeout: timerDuration('leave a slow request head waiting forever').prefault('20s'),
        send_timeout: timerDuration('let a client that reads nothing hold its response forever').prefault(
          '60s',
        ),
        keepalive_timeout: timerDuration('close every keep-alive connection at once').prefault('65s'),
        max_connections: z.number().int().min(1).max(1_000_000).default(1024),
      })
      .prefault({}),
    index: z
      .strictObject({
        flush_interval: timerDuration('flush in a busy loop').prefault('1s'),
        // Hourly accounting rows older than this are pruned (every hour, in small batches). At
        // least an hour: a shorter retention would prune the hour being written.
        accounting_retention: duration
          .refine((ms) => ms >= 3_600_000, { message: 'must be at least 1h' })
          .prefault('30d'),
      })
      .prefault({}),
    auth: z
      .strictObject({
        // htpasswd file of client accounts (bcrypt entries, as `htpasswd -B` writes); re-read on
        // SIGHUP. null: no accounts, every client is anonymous.
        htpasswd: z.string().min(1).nullable().default(null),
        // Whether clients without an account may pull what anonymous pulls upstream may read.
        anonymous: z.boolean().default(true),
      })
      .prefault({}),
    // TLS on the listener (src/tls.ts): PEM files, re-read on SIGHUP. null cert and key: plain HTTP.
    tls: z
      .strictObject({
        cert: z.string().min(1).nullable().default(null),
        key: z.string().min(1).nullable().default(null),
        // CA certificates client certificates are checked against; a verified client certificate
        // signs its client in, as an htpasswd account does.
        client_ca: z.string().min(1).nullable().default(null),
        // 'none', 'optional' (a client with a certificate is signed in by it) or 'require' (no
        // handshake without one). null: 'optional' when client_ca is set, 'none' otherwise.
        client_auth: z.enum(['none', 'optional', 'require']).nullable().default(null),
      })
      .prefault({}),
    admin: z
      .strictObject({
        // Networks allowed to reach the status page, /_pullcache/* and /metrics (health checks
        // excepted); empty: no restriction.
        allow: z.array(network).prefault([]),
      })
      .prefault({}),
    // Webhooks, as distribution's notifications.endpoints: a JSON envelope of events POSTed to
    // each endpoint, best effort (src/notify/). Reloaded on SIGHUP.
    notifications: z
      .strictObject({
        endpoints: z
          .array(notifyEndpoint)
          .refine((list) => new Set(list.map((e) => e.name)).size === list.length, {
            message: 'endpoint names must be unique',
          })
          .prefault([]),
      })
      .prefault({}),
    // Several nodes as one cache (src/cluster/, src/upstream/cluster-upstream.ts): each key is
    // fetched upstream by the node that owns it, the others relay. Empty peers: a single node.
    cluster: z
      .strictObject({
        // This node's URL as the other nodes reach it.
        node_url: nodeUrl.nullable().default(null),
        // Every node of the cluster (this one may be listed too); reloaded on SIGHUP.
        peers: z.array(nodeUrl).prefault([]),
        // A DNS name whose A/AAAA records are the nodes (a Kubernetes headless Service), resolved
        // every probe round: "http://pullcache.ns.svc:5000"; node_url is then the node's address.
        peers_dns: nodeUrl.nullable().default(null),
        // Nodes find each other by heartbeats in the bucket (<prefix>members/); needs S3 storage.
        peers_from_bucket: z.boolean().default(false),
        // A file with the secret the nodes present to each other (or PULLCACHE_CLUSTER_SECRET).
        secret_file: z.string().min(1).nullable().default(null),
      })
      .prefault({}),
    // Where blob bytes live: the local data dir alone, or an S3-compatible bucket behind it (the
    // data dir then is the hot tier and the index; store/shared-tier.ts). The keys are a secret's
    // neighbours, never the secret: credentials come from AWS_ACCESS_KEY_ID and
    // AWS_SECRET_ACCESS_KEY or from the files named here.
    storage: z
      .strictObject({
        type: z.enum(['local', 's3']).default('local'),
        s3: z
          .strictObject({
            // null: AWS S3 itself, by region.
            endpoint: bucketEndpoint.nullable().default(null),
            bucket: z
              .string()
              .regex(
                /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/,
                'a bucket name of 3-63 lowercase letters, digits, "." or "-"',
              )
              .nullable()
              .default(null),
            // Keys go under it: "<prefix>blobs/sha256/..."; "" for the bucket's root.
            prefix: z
              .string()
              .regex(/^([A-Za-z0-9._-]+\/)*$/, 'path segments each ending in "/", like "pullcache/"')
              .default(''),
            region: z.string().min(1).default('us-east-1'),
            // Bucket in the path (http://host/bucket/key), as MinIO, Ceph and Swift want by default.
            force_path_style: z.boolean().default(false),
            access_key_id_file: z.string().min(1).nullable().default(null),
            secret_access_key_file: z.string().min(1).nullable().default(null),
            // Multipart uploads older than this are a dead process's: the janitor aborts them.
            abandoned_upload_age: timerDuration('abort uploads still being written').prefault('6h'),
            // The bucket's byte budget for blobs, for the whole cluster (null: unlimited; store/
            // bucket-eviction.ts). Above high_water * max_size one node deletes the least recently
            // used blobs until the bucket is under low_water * max_size.
            max_size: nullableSize.prefault(null),
            high_water: z.number().gt(0).max(1).default(0.95),
            low_water: z.number().gt(0).max(1).default(0.85),
            // A blob used this recently is never deleted: longer than any stream from the bucket.
            grace: duration.prefault('1h'),
            // How often each node writes its access journal to the bucket, and how often the
            // evictor looks at the budget.
            journal_interval: timerDuration('write the journal in a busy loop').prefault('1m'),
            eviction_interval: timerDuration('run bucket eviction in a busy loop').prefault('5m'),
            // Offload (store/s3-presign.ts): a GET of a blob the bucket holds is answered with a
            // 307 to a presigned URL of its object, so the bytes go from the bucket to the client.
            redirect: z
              .strictObject({
                enabled: z.boolean().default(false),
                // How long a URL handed out works: enough to start the GET, short enough not to
                // be a pass to keep. S3 (SigV4) allows up to 7 days; an hour is plenty here.
                ttl: timerDuration('hand out URLs that have already expired')
                  .refine((ms) => ms >= 1000 && ms <= 3_600_000, { message: 'must be from 1s to 1h' })
                  .prefault('5m'),
                // Where clients reach the bucket (a name outside, a proxy in front of it); null:
                // the endpoint. The URLs are signed for this host.
                public_endpoint: bucketEndpoint.nullable().default(null),
              })
              .prefault({}),
          })
          .refine((s3) => !s3.redirect.enabled || s3.max_size === null || s3.grace >= s3.redirect.ttl, {
            // A URL handed out must still find its object: the evictor spares what was used
            // within grace, so grace may not be shorter than the URLs' life.
            message: 'must be at least redirect.ttl, or a blob could go while a presigned URL to it works',
            path: ['grace'],
          })
          .refine(...lowWaterBelowHigh)
          .prefault({}),
      })
      .refine((s) => s.type !== 's3' || s.s3.bucket !== null, {
        message: 'S3 storage needs a bucket (storage.s3.bucket or PULLCACHE_S3_BUCKET)',
        path: ['s3', 'bucket'],
      })
      .refine((s) => s.type === 's3' || !s.s3.redirect.enabled, {
        message: 'redirects go to the bucket: they need storage.type s3',
        path: ['s3', 'redirect', 'enabled'],
      })
      .prefault({}),
    log: z
      .strictObject({
        level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
        access: z.boolean().default(true),
      })
      .prefault({}),
  })
  .superRefine(
    (config, ctx) => {
      // Every host names one upstream, the root's included. Run even when other keys are wrong
      // (every problem at once), so the values are looked at as what they may be.
      const root = (config.upstream as { host?: unknown } | undefined)?.host
      const seen = new Set<unknown>([root])
      const list: unknown[] = Array.isArray(config.upstreams) ? config.upstreams : []
      list.forEach((entry, i) => {
        const host = (entry as { host?: unknown } | null)?.host
        if (typeof host !== 'string') return
        if (seen.has(host)) {
          ctx.addIssue({
            code: 'custom',
            path: ['upstreams', i, 'host'],
            message: `${host} is already the host of another upstream`,
          })
        }
        seen.add(host)
      })
      // Shares are of cache.max_size: without a budget there is nothing to share, and together
      // they cannot be more than all of it.
      const shares = list.map((e) => (e as { budget_share?: unknown } | null)?.budget_share)
      const given = shares.filter((s): s is number => typeof s === 'number')
      const maxSize = (config.cache as { max_size?: unknown } | undefined)?.max_size
      if (given.length > 0 && (maxSize === null || maxSize === undefined)) {
        const i = shares.findIndex((s) => typeof s === 'number')
        ctx.addIssue({
          code: 'custom',
          path: ['upstreams', i, 'budget_share'],
          message: 'a budget share is a share of cache.max_size, which is not set',
        })
      }
      const leak = redirectLeak(config)
      if (leak !== undefined) ctx.addIssue({ code: 'custom', path: leak.path, message: leak.message })
      if (given.reduce((a, b) => a + b, 0) > 1) {
        ctx.addIssue({
          code: 'custom',
          path: ['upstreams'],
          message: 'the budget shares of the upstreams add up to more than 1',
        })
      }
    },
    { when: () => true },
  )

/** The schema, for config.ts and for the tests that walk every key. */
export { schema as configSchema }
