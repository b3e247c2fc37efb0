// Storage on a bucket and the cluster's relay, measured: the figures issue 10 asks for in
// BENCHMARKS.md. Starts an upstream registry (distribution, as bench/cold.mjs has it), the test
// S3 server (test/support/s3-server.sh: Swift's S3 API), one pullcache on the local store (L) and
// two pullcache nodes on one bucket as a cluster (A, B), then each round, in an order rotated
// round by round:
//   cold, local store     GET of a blob L has never seen
//   cold, bucket, owner   GET of a new blob at its owner: upstream -> hot tier -> upload behind
//   cold, relayed         GET of a new blob at the other node, which relays the owner's stream
// and then, warm:
//   warm, local store     the first blob again at L
//   warm, hot tier        the owner's blob again at the owner
//   warm, bucket          the owner's blob at the other node: its hot tier is empty, the bucket
//                         has it (a warm blob is never relayed: any node serves the bucket's)
//   warm, relayed copy    the relayed blob again at the node that relayed it (its own copy)
// For each: wall rate, time to first byte (curl's time_starttransfer), and CPU per GB of the
// pullcache processes (all of them: a relay costs both nodes) and, apart, of the S3 server.
// A cold GET's CPU runs until its upload to the bucket has ended (store.blob_published in the
// node's log), since that upload is the bucket's price for the GET. Round 1 warms the JIT and
// is left out of the figures.
//
//   npm run build && node bench/cluster.mjs [--rounds N] [--size MiB]
//
// Everything it writes goes under a temp dir that is removed at the end (BENCH_KEEP=1 keeps it).
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { cpuSeconds, median } from './lib/measure.mjs'
import { childrenOf, freePort, listeningLine, removeTree, run, sleep, startDaemon } from './lib/procs.mjs'
import { startUpstream } from './lib/registry.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const S3_SCRIPT = join(ROOT, 'test', 'support', 's3-server.sh')
const MiB = 1024 * 1024
const o = { rounds: 4, size: 64 }
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i]
  if (a === '--rounds') o.rounds = Number(process.argv[++i])
  else if (a === '--size') o.size = Number(process.argv[++i])
  else {
    process.stderr.write(`cluster.mjs: unknown option ${a}\n`)
    process.exit(2)
  }
}
const size = o.size * MiB
const SECRET = 'pullcache-bench-cluster-secret'
const work = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'pullcache-cluster.'))
const logDir = join(work, 'logs')
mkdirSync(logDir, { recursive: true })
const log = (m) => process.stderr.write(`[cluster] ${m}\n`)
const daemons = []
const s3State = join(work, 's3')
let s3Started = false
try {
  // Three new blobs a round: one per cold case.
  log(`writing ${3 * o.rounds} random blobs of ${o.size} MiB under ${work}`)
  const {
    data,
    daemon: registryDaemon,
    url: upstream,
  } = await startUpstream({
    work,
    logDir,
    size,
    count: 3 * o.rounds,
  })
  daemons.push(registryDaemon)
  const s3 = await startS3()
  s3Started = true
  const s3Pids = () => {
    const pids = []
    for (const f of readdirSync(join(s3State, 'run')).filter((n) => /\.pid(file)?$/.test(n))) {
      const pid = Number(readFileSync(join(s3State, 'run', f), 'utf8').trim())
      if (pid > 0) pids.push(pid, ...childrenOf(pid))
    }
    return pids
  }
  // Swift's daemons and memcached, and what they forked: the S3 server's CPU.
  const s3PidList = s3Pids()

  const env = { ...process.env }
  for (const k of Object.keys(env)) if (k.startsWith('PULLCACHE_') || k.startsWith('AWS_')) delete env[k]
  const main = join(ROOT, 'dist', 'main.js')
  const localPort = await freePort()
  const local = await startNode('L', `http://127.0.0.1:${localPort}`, {})
  const [portA, portB] = [await freePort(), await freePort()]
  const nodeUrls = [`http://127.0.0.1:${portA}`, `http://127.0.0.1:${portB}`]
  const bucketEnv = {
    PULLCACHE_STORAGE: 's3',
    PULLCACHE_S3_ENDPOINT: s3.S3_ENDPOINT,
    PULLCACHE_S3_BUCKET: 'bench',
    PULLCACHE_S3_REGION: s3.S3_REGION,
    PULLCACHE_S3_FORCE_PATH_STYLE: 'true',
    AWS_ACCESS_KEY_ID: s3.S3_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY: s3.S3_SECRET_ACCESS_KEY,
    PULLCACHE_PEERS: nodeUrls.join(','),
    PULLCACHE_CLUSTER_SECRET: SECRET,
  }
  // Started one after the other: the first creates the bucket.
  const nodes = []
  for (const [i, url] of nodeUrls.entries()) {
    nodes.push(await startNode(['A', 'B'][i], url, { ...bucketEnv, PULLCACHE_NODE_URL: url }))
  }
  async function startNode(name, url, extra) {
    const d = await startDaemon(name, process.execPath, [main, 'serve'], {
      env: {
        ...env,
        PULLCACHE_LISTEN: `127.0.0.1:${new URL(url).port}`,
        PULLCACHE_DATA_DIR: join(work, `data-${name}`),
        PULLCACHE_UPSTREAM: upstream,
        PULLCACHE_ACCESS_LOG: 'false',
        ...extra,
      },
      logDir,
      ready: listeningLine,
    })
    daemons.push(d)
    return { name, url, pid: d.pid, log: join(logDir, `${name}.log`) }
  }
  // Who owns a blob: the nodes' own rendezvous hashing, from the build under test.
  const { Membership } = await import(pathToFileURL(join(ROOT, 'dist', 'cluster', 'membership.js')).href)
  const quiet = { info() {}, warn() {}, error() {}, debug() {} }
  const members = new Membership({ self: nodeUrls[0], peers: nodeUrls, log: quiet })
  const ownerOf = (digest) => nodes.find((n) => n.url === members.ownerOf(`blob\0${digest}`))
  members.close()
  const otherThan = (node) => nodes.find((n) => n !== node)

  const pullcachePids = [local.pid, ...nodes.map((n) => n.pid)]
  const published = (node, digest) =>
    readFileSync(node.log, 'utf8')
      .split('\n')
      .some((l) => l.includes('"store.blob_published"') && l.includes(digest))
  /** One GET; CPU until `settled` says the work it caused is over (or 300 ms for the local store). */
  const measure = async (node, blob, settled) => {
    const path = `/v2/${blob.repo}/blobs/${blob.digest}`
    const cpu0 = cpuSeconds(pullcachePids)
    const s3Cpu0 = cpuSeconds(s3PidList)
    const r = await curl(`${node.url}${path}`)
    const deadline = performance.now() + 60_000
    await sleep(300)
    while (settled !== undefined && !settled() && performance.now() < deadline) await sleep(100)
    const gb = size / 1e9
    return {
      ok: r.status === 200 && r.bytes === size,
      mbps: r.speed / 1e6,
      ttfbMs: r.ttfb * 1000,
      cpuPerGB: (cpuSeconds(pullcachePids) - cpu0) / gb,
      s3CpuPerGB: (cpuSeconds(s3PidList) - s3Cpu0) / gb,
    }
  }

  const cases = new Map()
  const note = (name, row) => {
    if (!cases.has(name)) cases.set(name, [])
    cases.get(name).push(row)
  }
  for (let round = 0; round < o.rounds; round++) {
    const [x, y, z] = data.coldBlobs.slice(3 * round, 3 * round + 3)
    const ownerY = ownerOf(y.digest)
    const ownerZ = ownerOf(z.digest)
    const relayer = otherThan(ownerZ)
    const cold = [
      ['cold, local store', () => measure(local, x)],
      ['cold, bucket, at the owner', () => measure(ownerY, y, () => published(ownerY, y.digest))],
      // Both nodes upload it (the relaying node fills from the relay as from upstream): CPU
      // until both uploads ended.
      [
        'cold, relayed by the other node',
        () => measure(relayer, z, () => published(ownerZ, z.digest) && published(relayer, z.digest)),
      ],
    ]
    const warm = [
      ['warm, local store', () => measure(local, x)],
      ['warm, hot tier (owner)', () => measure(ownerY, y)],
      ['warm, bucket (empty hot tier)', () => measure(otherThan(ownerY), y)],
      ['warm, relayed copy (relaying node)', () => measure(relayer, z)],
    ]
    for (const list of [cold, warm]) {
      for (let j = 0; j < list.length; j++) {
        const [name, go] = list[(round + j) % list.length]
        const row = await go()
        log(`round ${round + 1} ${name}: ${JSON.stringify(row)}`)
        // Round 1 warms the JIT: left out.
        if (round > 0) note(name, row)
      }
    }
  }

  const spread = (xs, digits) =>
    `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`
  const lines = [
    `| case | MB/s | TTFB ms | pullcache CPU s/GB | S3 server CPU s/GB |`,
    `|---|---|---|---|---|`,
  ]
  for (const [name, rows] of cases) {
    const ok = rows.every((r) => r.ok)
    lines.push(
      `| ${name}${ok ? '' : ' (ERRORS)'} | ${spread(
        rows.map((r) => r.mbps),
        0,
      )} | ${spread(
        rows.map((r) => r.ttfbMs),
        1,
      )} | ${spread(
        rows.map((r) => r.cpuPerGB),
        2,
      )} | ${spread(
        rows.map((r) => r.s3CpuPerGB),
        2,
      )} |`,
    )
  }
  const load = loadavg()
    .map((v) => v.toFixed(2))
    .join(' ')
  process.stdout.write(
    `${o.size} MiB blobs, ${o.rounds - 1} measured rounds (median (min–max)), ${cpus().length} cores, load average after: ${load}\n${lines.join('\n')}\n`,
  )
} finally {
  for (const d of daemons.reverse()) await d.stop()
  if (s3Started) {
    await promisify(execFile)('bash', [S3_SCRIPT, 'stop'], {
      env: { ...process.env, S3_STATE: s3State },
    }).catch(() => {})
  }
  if (process.env.BENCH_KEEP === '1') log(`kept ${work}`)
  else removeTree(work)
}

/** The test S3 server on five free ports of its range; its env lines. */
async function startS3() {
  mkdirSync(s3State, { recursive: true })
  for (let attempt = 0; ; attempt++) {
    const base = 6200 + 5 * Math.floor(Math.random() * 19)
    try {
      const { stdout } = await promisify(execFile)('bash', [S3_SCRIPT, 'start'], {
        env: { ...process.env, S3_STATE: s3State, S3_PORT: String(base) },
      })
      return Object.fromEntries(
        stdout
          .trim()
          .split('\n')
          .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
      )
    } catch (err) {
      if (err.code === 3 && attempt < 10) continue
      throw err
    }
  }
}

/** One GET to /dev/null with curl: status, bytes, rate and time to first byte. */
async function curl(url) {
  const { stdout } = await run('curl', [
    '-s',
    '-o',
    '/dev/null',
    '--max-time',
    '300',
    '-w',
    '%{http_code} %{size_download} %{speed_download} %{time_starttransfer}',
    url,
  ])
  const [status, bytes, speed, ttfb] = stdout.trim().split(' ').map(Number)
  return { status, bytes, speed, ttfb }
}
