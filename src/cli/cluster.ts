// `pullcache cluster check`: asks every node of the configured cluster what it knows of it
// (GET /_pullcache/cluster, with the cluster secret) and says whether they form one cluster:
// every node answers, takes the secret, calls itself what the others call it, lists the same
// nodes, and sees them all answer. Run it on any node, with that node's configuration.

import type { ClusterView } from '../http/cluster-route.js'
import { humanBytes } from '../human-bytes.js'
import { PEER_HEADER } from '../upstream/cluster-upstream.js'
import { CliExit, CONFIG_FLAGS, configFrom, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parseCommand } from './args.js'

export const CLUSTER_USAGE = `Usage: pullcache cluster check [options]

Asks every node in cluster.peers (and this node, cluster.node_url) for its view of the cluster
and checks that they agree. With cluster.peers_dns or cluster.peers_from_bucket, the nodes this
node found that way are asked too. Each node is shown with how it was found (static, dns,
bucket). Exit status 0: one cluster, every node answering; 1: not so.

  --config FILE          JSON config file (env PULLCACHE_CONFIG); the cluster's settings come from
                         it and from PULLCACHE_NODE_URL, PULLCACHE_PEERS(_DNS, _FROM_BUCKET),
                         PULLCACHE_CLUSTER_SECRET(_FILE)
  --timeout DUR          how long to wait for each node, in seconds (default 3)
`

export const CLUSTER_OPTIONS = { config: CONFIG_FLAGS.config, timeout: { type: 'string' } } as const

/** What one node answered, or why it did not. */
type Answer = { url: string; view?: ClusterView; problem?: string }

export async function clusterCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, CLUSTER_OPTIONS, CLUSTER_USAGE)
  if (values.help) {
    process.stdout.write(CLUSTER_USAGE)
    return EXIT_OK
  }
  if (positionals[0] !== 'check' || positionals.length > 1) {
    throw new CliExit(EXIT_USAGE, `cluster: expected the subcommand check\n\n${CLUSTER_USAGE}`)
  }
  const timeoutSeconds = values.timeout === undefined ? 3 : Number(values.timeout)
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) {
    throw new CliExit(
      EXIT_USAGE,
      `cluster check: --timeout must be a number of seconds, got ${values.timeout}`,
    )
  }
  const { cluster } = configFrom(values)
  const found = cluster.peers_dns !== null || cluster.peers_from_bucket
  if (cluster.node_url === null || (cluster.peers.length === 0 && !found) || cluster.secret === null) {
    throw new CliExit(
      EXIT_USAGE,
      'cluster check: this node is not configured as a cluster (cluster.node_url, cluster.peers, peers_dns or peers_from_bucket, and the secret)',
    )
  }
  const self = cluster.node_url
  const secret = cluster.secret
  const timeoutMs = timeoutSeconds * 1000
  // Members found by DNS or in the bucket are known to the running nodes, not to the config:
  // this node's own view names them, and every node is then held to the same set.
  const own = await ask(self, secret, timeoutMs)
  const expected = [
    ...new Set([self, ...cluster.peers, ...(found ? (own.view?.members.map((m) => m.url) ?? []) : [])]),
  ].sort()
  const answers = await Promise.all(expected.map((url) => (url === self ? own : ask(url, secret, timeoutMs))))
  const foundBy = new Map((own.view?.members ?? []).map((m) => [m.url, m.found ?? []]))

  const problems: string[] = []
  const lines = answers.map(({ url, view, problem }) => {
    const me = url === self ? ' (this node)' : ''
    const how = url === self ? '' : `; found by ${foundBy.get(url)?.join(', ') || 'static'}`
    if (view === undefined) {
      problems.push(`${url}: ${problem}`)
      return `${url}${me}  no answer: ${problem}${how}`
    }
    const listed = view.members.map((m) => m.url).sort()
    const live = view.members.filter((m) => m.live).length
    if (view.node_url !== url) problems.push(`${url} calls itself ${view.node_url}`)
    if (listed.join(',') !== expected.join(',')) {
      problems.push(`${url} lists other nodes: ${listed.join(', ')}`)
    }
    if (live < view.members.length) {
      const down = view.members.filter((m) => !m.live).map((m) => m.url)
      problems.push(`${url} cannot reach ${down.join(', ')}`)
    }
    const line = `${url}${me}  pullcache ${view.version}, ${view.members.length} nodes, ${live} answering${how}`
    const more = [
      ...(view.bucket === undefined ? [] : [storageLine(view.bucket)]),
      ...(view.bucket_budget === undefined ? [] : [bucketLine(view.bucket_budget)]),
    ]
    return [line, ...more].join('\n  ')
  })
  const places = differentPlaces(answers.flatMap(({ view }) => (view === undefined ? [] : [view])))
  if (places !== undefined) problems.push(places)
  process.stdout.write(`${lines.join('\n')}\n`)
  if (problems.length === 0) {
    process.stdout.write(`one cluster of ${expected.length} nodes, every node answering\n`)
    return EXIT_OK
  }
  process.stdout.write(`not one cluster:\n  ${problems.join('\n  ')}\n`)
  return EXIT_FAILED
}

/**
 * One cache is one bucket: nodes on another bucket (or prefix), or on local disks beside nodes
 * on a bucket, each fetch and keep their own copies. Says so, or undefined when all agree.
 */
export function differentPlaces(views: Pick<ClusterView, 'bucket'>[]): string | undefined {
  const places = new Set(
    views.map((v) =>
      v.bucket === undefined ? 'local storage' : `bucket ${v.bucket.bucket}/${v.bucket.prefix}`,
    ),
  )
  if (places.size <= 1) return undefined
  return `the nodes keep blobs in different places: ${[...places].sort().join(', ')}`
}

/** The bucket a node uses, and what its probe found the store can do. */
function storageLine(b: NonNullable<ClusterView['bucket']>): string {
  const where = `bucket ${b.bucket}${b.prefix === '' ? '' : ` (prefix ${b.prefix})`}${b.endpoint === null ? '' : ` at ${b.endpoint}`}`
  const c = b.capabilities
  if (c === null) return `${where}: not reached yet (the start-up probe failed)`
  const yes = (v: boolean) => (v ? 'yes' : 'no')
  return `${where}: conditional create ${yes(c.conditionalCreate)}, conditional replace ${yes(c.conditionalReplace)}, presigned GET ${yes(c.presignedGet)}`
}

/** The bucket's budget and its last eviction run, as one node sees them. */
function bucketLine(b: NonNullable<ClusterView['bucket_budget']>): string {
  const budget = b.max_size === null ? 'no budget' : `budget ${humanBytes(b.max_size)}`
  const evictor = b.evictor ? ', evicts' : ''
  if (b.last_run === null) return `bucket: ${budget}${evictor}, no eviction run yet`
  const r = b.last_run
  return `bucket: ${humanBytes(r.bytes)} in ${r.objects} blobs, ${budget}${evictor}; last eviction run ${r.at} (${r.deleted} deleted)`
}

async function ask(url: string, secret: string, timeoutMs: number): Promise<Answer> {
  try {
    const res = await fetch(`${url}/_pullcache/cluster`, {
      headers: { [PEER_HEADER]: secret },
      signal: AbortSignal.timeout(timeoutMs),
    })
    if (res.status === 403) return { url, problem: 'the cluster secret was refused' }
    if (res.status === 404) return { url, problem: 'not configured as a cluster node' }
    if (!res.ok) return { url, problem: `answered ${res.status}` }
    return { url, view: (await res.json()) as ClusterView }
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code
    return { url, problem: cause ?? (err as Error).message }
  }
}
