// The pullcache benchmark: pullcache next to distribution's proxy mode and nginx, one upstream.
// Run it as `bash bench/run` (which installs the tools and cleans up after it); BENCHMARKS.md
// explains the setup and the figures.
//
//   upstream: docker-registry (filesystem storage, no auth), library/big (200 MiB random layers:
//             one for the warm measurements, one more per cold measurement) and
//             library/small:latest, written straight into its storage layout (bench/lib/data.mjs)
//   counting proxies (bench/counting-proxy.mjs), one per mirror plus one for the direct GETs,
//             each in front of the upstream, so the upstream requests of each are counted apart
//   pullcache     -> its counting proxy -> upstream      (empty data dir at the start)
//   distribution  -> its counting proxy -> upstream      (proxy.remoteurl; empty storage at the start)
//   Both mirrors run for the whole bench, like a mirror in service: a cold measurement is a GET of
//   a blob that mirror has not seen yet, not a restart.
//   nginx         serves the same blob file from disk (sendfile): the machine's limit
//
// Options:
//   --runs N          warm single-client runs (default 9); the parallel and cold phases do N/2
//                     (at least 3), the 16-client cold phase 3
//   --quick           fewer runs and shorter windows, to check the bench itself
//   --json FILE       also write every figure as JSON
//   --link MBps       upstream link rate for the extra "slow link" cold phase (default 100; 0 skips it)
//   --profile DIR     run pullcache under `node --cpu-prof`; the profile is written to DIR when the
//                     bench stops it (summarise with bench/profile-summary.mjs)
//   --fill-cache      first fill the page cache with other files, leaving 1 GiB free, as on a host
//                     in service (its memory full of cached files): new page-cache pages then come
//                     from reclaiming old ones, not from free memory (BENCHMARKS.md, "A host whose
//                     memory is full of page cache")
import {
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { loadavg } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildUpstreamData } from './lib/data.mjs'
import {
  abRequests,
  cpuSeconds,
  curlGet,
  DOCKER_ACCEPT,
  median,
  parallelGets,
  peakRss,
  rssOf,
  timedShell,
  withCpu,
  wrkGet,
} from './lib/measure.mjs'
import { pullcacheNodeFlags } from './lib/node-flags.mjs'
import {
  answers,
  childrenOf,
  freePort,
  listeningLine,
  recordPid,
  run,
  sleep,
  startDaemon,
  trackPidsIn,
} from './lib/procs.mjs'
import { startRegistry as startRegistryIn } from './lib/registry.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const MiB = 1024 * 1024
const MB = 1e6

const opts = parseArgs(process.argv.slice(2))
const WORK = process.env.BENCH_WORK
if (!WORK) {
  process.stderr.write('bench.mjs: run it through bash bench/run (BENCH_WORK is not set)\n')
  process.exit(2)
}
const BLOB_SIZE = 200 * MiB
const C = {
  warmRuns: opts.quick ? 2 : opts.runs,
  parallelRuns: opts.quick ? 1 : Math.max(3, Math.ceil(opts.runs / 2)),
  coldRuns: opts.quick ? 1 : Math.max(3, Math.ceil(opts.runs / 2)),
  coalescedRuns: opts.quick ? 1 : 3,
  parallel: 16,
  rssStreams: 32,
  manifestSeconds: opts.quick ? 2 : 5,
  manifestConnections: 16,
}

function parseArgs(argv) {
  const o = { runs: 9, quick: false, json: null, link: 100, profile: null, fillCache: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--quick') o.quick = true
    else if (a === '--runs') o.runs = Math.max(1, Number(argv[++i]))
    else if (a === '--json') o.json = resolve(argv[++i])
    else if (a === '--link') o.link = Number(argv[++i])
    else if (a === '--profile') o.profile = resolve(argv[++i])
    else if (a === '--fill-cache') o.fillCache = true
    else {
      process.stderr.write(`bench.mjs: unknown option ${a}\n`)
      process.exit(2)
    }
  }
  return o
}

const log = (msg) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`)
const logDir = join(WORK, 'logs')
mkdirSync(logDir, { recursive: true })
trackPidsIn(join(WORK, 'pids'))

/** Environment for a child without any inherited PULLCACHE_* or REGISTRY_* overrides. */
function cleanEnv(extra) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('PULLCACHE_') && !k.startsWith('REGISTRY_')) env[k] = v
  }
  return { ...env, ...extra }
}

// ---------------------------------------------------------------------------------------------
// Servers

async function startRegistry(name, { port, storage, remote }) {
  const { daemon } = await startRegistryIn(name, {
    configDir: WORK,
    logDir,
    storage,
    port,
    remote,
    env: cleanEnv({}),
  })
  return daemon
}

async function startCountingProxy(name, target, { redirectBlobs = false } = {}) {
  const d = await startDaemon(
    name,
    process.execPath,
    [
      join(ROOT, 'bench', 'counting-proxy.mjs'),
      '--target',
      target,
      '--listen',
      '127.0.0.1:0',
      ...(redirectBlobs ? ['--redirect-blobs'] : []),
    ],
    { env: cleanEnv({}), logDir, ready: listeningLine },
  )
  const url = d.ready
  const post = async (path) => {
    const res = await fetch(`${url}${path}`, { method: 'POST', signal: AbortSignal.timeout(5000) })
    await res.arrayBuffer()
  }
  return {
    daemon: d,
    url,
    reset: () => post('/_bench/reset'),
    setRate: (mbps) => post(`/_bench/rate?mbps=${mbps}`),
    async counts() {
      const res = await fetch(`${url}/_bench/counts`, { signal: AbortSignal.timeout(5000) })
      return res.json()
    },
  }
}

let profileRun = 0
async function startPullcache(port, dataDir, upstream) {
  rmSync(dataDir, { recursive: true, force: true })
  const nodeArgs = []
  if (opts.profile) {
    mkdirSync(opts.profile, { recursive: true })
    nodeArgs.push(
      '--cpu-prof',
      `--cpu-prof-dir=${opts.profile}`,
      `--cpu-prof-name=pullcache-${++profileRun}.cpuprofile`,
    )
  }
  return startDaemon(
    'pullcache',
    process.execPath,
    [...pullcacheNodeFlags(BUILT_FROM), ...nodeArgs, MAIN, 'serve'],
    {
      env: cleanEnv({
        PULLCACHE_LISTEN: `127.0.0.1:${port}`,
        PULLCACHE_DATA_DIR: dataDir,
        PULLCACHE_UPSTREAM: upstream,
        PULLCACHE_ACCESS_LOG: 'false',
      }),
      logDir,
      ready: listeningLine,
    },
  )
}

/**
 * One nginx (master and workers) under WORK/<name>: `sendfile` on or off, and `server` the
 * server block's body (a document root, or a proxy cache).
 */
async function startNginx(name, port, { sendfile, server, ready }) {
  const dir = join(WORK, name)
  mkdirSync(dir, { recursive: true })
  const asRoot = process.getuid?.() === 0
  const conf = `${asRoot ? 'user root;\n' : ''}worker_processes auto;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile ${sendfile ? 'on' : 'off'};
  tcp_nopush on;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  default_type application/octet-stream;
  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=blobs:10m max_size=50g inactive=1d use_temp_path=off;
  server {
    listen 127.0.0.1:${port};
    ${server}
  }
}
`
  writeFileSync(join(dir, 'nginx.conf'), conf)
  // Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
  const binary = existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx'
  const d = await startDaemon(name, binary, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], {
    env: cleanEnv({}),
    logDir,
    ready,
  })
  for (const pid of childrenOf(d.pid)) recordPid(pid, `${name} worker`)
  return { daemon: d, url: `http://127.0.0.1:${port}`, pids: () => [d.pid, ...childrenOf(d.pid)] }
}

/** nginx serving the blob file from disk (the same file, hard-linked, at the registry's path). */
const nginxFile = (name, port, sendfile) =>
  startNginx(name, port, {
    sendfile,
    server: `root ${docRoot};`,
    ready: answers(`http://127.0.0.1:${port}${blobPath}`, 200, 'HEAD'),
  })

/**
 * nginx as a caching proxy in front of its own counting proxy: the cold path of a plain HTTP
 * cache (it writes the body to a temp file while it sends it, and verifies nothing). Buffers of
 * 64 KiB, as one would set for large bodies.
 */
const nginxCache = (name, port, upstream) =>
  startNginx(name, port, {
    sendfile: true,
    server: `location / {
      proxy_pass ${upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
      proxy_buffer_size 64k;
      proxy_buffers 32 64k;
      proxy_busy_buffers_size 256k;
      proxy_cache blobs;
      proxy_cache_valid 200 1y;
      proxy_cache_lock on;
    }`,
    ready: answers(`http://127.0.0.1:${port}/v2/`),
  })

/**
 * Writes files of zeros (fsynced, so their pages are clean and the kernel may take them back)
 * until 1 GiB of memory is left free. Before the upstream's blobs are written: these pages are
 * then the oldest, the first the kernel reclaims. Returns the bytes written.
 */
async function fillPageCache(dir) {
  const GiB = 1024 * MiB
  const freeKb = Number(/MemFree:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0)
  const files = Math.max(0, Math.floor((freeKb * 1024 - GiB) / GiB))
  const disk = statfsSync(WORK)
  // The bench's own data needs about 10 GB besides (BENCHMARKS.md).
  if (disk.bavail * disk.bsize < files * GiB + 12 * GiB) {
    throw new Error(`--fill-cache: ${files} GiB of files and the bench's 12 GiB do not fit under ${WORK}`)
  }
  log(`filling the page cache: ${files} GiB of other files, 1 GiB of memory left free`)
  mkdirSync(dir, { recursive: true })
  for (let i = 0; i < files; i++) {
    const args = [
      'if=/dev/zero',
      `of=${join(dir, `f${i}`)}`,
      'bs=4M',
      'count=256',
      'conv=fsync',
      'status=none',
    ]
    const r = await run('dd', args, { timeoutMs: 300_000 })
    if (r.code !== 0) throw new Error(`--fill-cache: dd failed: ${r.stderr}`)
  }
  return files * GiB
}

// ---------------------------------------------------------------------------------------------
// Setup

log(`work dir ${WORK}`)
const t0 = performance.now()
// pullcache runs from a copy of dist/ taken now, so a rebuild while the bench runs (npm run build
// in the same tree) cannot change the code under measurement halfway. BENCH_DIST names another
// build's dist/ to measure instead (an A/B of two builds with the same bench).
const APP = join(WORK, 'app')
const DIST = process.env.BENCH_DIST ? resolve(process.env.BENCH_DIST) : join(ROOT, 'dist')
const BUILT_FROM = dirname(DIST)
mkdirSync(APP, { recursive: true })
cpSync(DIST, join(APP, 'dist'), { recursive: true, preserveTimestamps: true })
cpSync(join(ROOT, 'package.json'), join(APP, 'package.json'))
symlinkSync(join(ROOT, 'node_modules'), join(APP, 'node_modules'))
const MAIN = join(APP, 'dist', 'main.js')
const dataDir = join(WORK, 'data')
mkdirSync(dataDir, { recursive: true })
const filledCache = opts.fillCache ? await fillPageCache(join(WORK, 'fill')) : 0
log(`writing random blobs of ${BLOB_SIZE / MiB} MiB and the upstream registry's storage`)
// One warm blob, and one cold blob per cold measurement (each mirror GETs each once).
const coldCount = 1 + C.coldRuns + C.coalescedRuns + (opts.link > 0 ? 2 : 0)
const data = buildUpstreamData(join(dataDir, 'upstream-storage'), dataDir, BLOB_SIZE, coldCount)
const digest = data.blob.digest
const blobPath = `/v2/${data.blob.repo}/blobs/${digest}`
const manifestPath = `/v2/${data.smallImage.repo}/manifests/${data.smallImage.tag}`
// nginx's document root: the same file (a hard link), at the same URL path a registry uses.
const docRoot = join(dataDir, 'nginx-root')
mkdirSync(join(docRoot, 'v2', data.blob.repo, 'blobs'), { recursive: true })
await run('ln', [data.blob.path, join(docRoot, blobPath.slice(1))])

const upstreamPort = await freePort()
const upstream = await startRegistry('upstream', {
  port: upstreamPort,
  storage: join(dataDir, 'upstream-storage'),
})
const upstreamUrl = `http://127.0.0.1:${upstreamPort}`
const cp = {
  // Blob bodies go straight from the registry to whoever follows a redirect (Docker Hub sends
  // them from its CDN); nginx's proxy_cache does not follow one, so its proxy carries them.
  pullcache: await startCountingProxy('proxy-pullcache', upstreamUrl, { redirectBlobs: true }),
  distribution: await startCountingProxy('proxy-distribution', upstreamUrl, { redirectBlobs: true }),
  direct: await startCountingProxy('proxy-direct', upstreamUrl, { redirectBlobs: true }),
  nginxCache: await startCountingProxy('proxy-nginx-cache', upstreamUrl),
}

const pcPort = await freePort()
const distPort = await freePort()
const nginxPort = await freePort()
const nginxOffPort = await freePort()
const nginxCachePort = await freePort()
let pcRun = 0
let distRun = 0
const mirrors = {
  pullcache: {
    url: `http://127.0.0.1:${pcPort}`,
    daemon: null,
    async start() {
      await this.daemon?.stop()
      rmSync(join(WORK, `pullcache-${pcRun}`), { recursive: true, force: true })
      this.daemon = await startPullcache(pcPort, join(WORK, `pullcache-${++pcRun}`), cp.pullcache.url)
    },
    pids() {
      return [this.daemon.pid]
    },
  },
  distribution: {
    url: `http://127.0.0.1:${distPort}`,
    daemon: null,
    async start() {
      await this.daemon?.stop()
      rmSync(join(WORK, `distribution-${distRun}`), { recursive: true, force: true })
      this.daemon = await startRegistry('distribution', {
        port: distPort,
        storage: join(WORK, `distribution-${++distRun}`),
        remote: cp.distribution.url,
      })
    },
    pids() {
      return [this.daemon.pid]
    },
  },
}
// On a VM's loopback sendfile is not the machine's limit (nginx with it off measured faster in
// rotated rounds), so both are measured.
const nginxServer = await nginxFile('nginx', nginxPort, true)
const nginxOffServer = await nginxFile('nginx-nosendfile', nginxOffPort, false)
// The proxy cache takes part in the cold phase like a mirror (mirrors.nginxCache below).
const nginxCacheServer = await nginxCache('nginx-cache', nginxCachePort, cp.nginxCache.url)
mirrors.nginxCache = {
  url: nginxCacheServer.url,
  pids: nginxCacheServer.pids,
  daemon: nginxCacheServer.daemon,
}
await mirrors.pullcache.start()
await mirrors.distribution.start()
await sleep(1000)
const idleRss = {
  pullcache: rssOf(mirrors.pullcache.pids()),
  distribution: rssOf(mirrors.distribution.pids()),
  nginx: rssOf(nginxServer.pids()),
  nginxOff: rssOf(nginxOffServer.pids()),
}

// Distribution's proxy mode against an upstream without auth: check a tag and the blob come
// through it before measuring anything.
{
  const res = await fetch(`${mirrors.distribution.url}${manifestPath}`, {
    headers: { accept: DOCKER_ACCEPT },
    signal: AbortSignal.timeout(10_000),
  })
  await res.arrayBuffer()
  if (res.status !== 200) throw new Error(`distribution proxy: tag GET answered ${res.status}`)
}

const R = {
  machine: await machine(),
  config: { blobBytes: BLOB_SIZE, ...C, link: opts.link, filledCache },
  cold: {},
  coalesced: {},
  slowLink: null,
  warm: {},
  parallel: {},
  rss: {},
  idleRss,
  manifests: {},
  load: { start: loadavg() },
}

// ---------------------------------------------------------------------------------------------
// Cold: one GET of an uncached blob, against the same GET straight from the upstream

async function blobGets(proxy) {
  await sleep(100)
  const c = await proxy.counts()
  return c.byKind['blob GET'] ?? 0
}

/** Cold blobs are handed out in order; every cold measurement gets one nobody has asked for yet. */
let coldUsed = 0
/** The upstream's file of each cold blob, by the path it is asked for. */
const coldFiles = new Map()
function nextColdBlob() {
  const blob = data.coldBlobs[coldUsed++]
  if (!blob) throw new Error('bench: ran out of cold blobs')
  const path = `/v2/${blob.repo}/blobs/${blob.digest}`
  coldFiles.set(path, blob.path)
  return path
}

/**
 * Waits until no request is open through any counting proxy (distribution keeps storing a blob
 * in the background after its client got it) and dirty pages are on disk, so one measurement's
 * leftovers do not run into the next.
 */
async function settle() {
  for (let i = 0; i < 600; i++) {
    const open = await Promise.all(Object.values(cp).map(async (p) => (await p.counts()).open))
    if (open.every((n) => n === 0)) break
    await sleep(100)
  }
  // A redirected body passes no proxy: wait, bounded, until the mirrors are idle (distribution
  // goes on storing a blob after its client has it), 10 ms of CPU or less in 200 ms.
  const pids = Object.values(mirrors).flatMap((m) => m.pids())
  for (let i = 0, before = cpuSeconds(pids); i < 300; i++) {
    await sleep(200)
    const now = cpuSeconds(pids)
    if (now - before <= 0.01) break
    before = now
  }
  await run('sync', [], { timeoutMs: 60_000 })
}

async function coldOnce(name, path) {
  const m = mirrors[name]
  await settle()
  await cp[name].reset()
  // CPU over the GET and what it leaves running (distribution stores the blob in a second
  // upstream GET after its client has it; pullcache fsyncs and commits after the last byte).
  const r = await withCpu(m.pids(), async () => {
    const got = await curlGet(`${m.url}${path}`, BLOB_SIZE)
    await settle()
    return got
  })
  return { ...r, upstreamGets: await blobGets(cp[name]) }
}

async function directOnce(url) {
  await settle()
  return curlGet(url, BLOB_SIZE)
}

/**
 * What a pull straight from the upstream costs when the client keeps the blob, as a mirror
 * must: curl writes it to a new file, which is then fsynced. Wall and the client's CPU.
 */
async function directToDiskOnce(url) {
  await settle()
  const file = join(WORK, 'to-disk.blob')
  const r = await timedShell(`curl -sfL -o '${file}' '${url}' && sync '${file}'`)
  await run('rm', ['-f', file])
  return { ...r, speed: BLOB_SIZE / r.wall, ok: true }
}

/**
 * The kernel's part of keeping a blob, alone: dd copies the upstream's file of it (in the page
 * cache) to a new file and fsyncs it. On a VM whose new page-cache pages are expensive this is
 * most of a cold GET's CPU for every server that stores the blob; it moves from minute to minute.
 */
async function writeFloorOnce(path) {
  await settle()
  const file = join(WORK, 'floor.blob')
  const r = await timedShell(`dd if='${coldFiles.get(path)}' of='${file}' bs=1M conv=fsync status=none`)
  await run('rm', ['-f', file])
  return { ...r, speed: BLOB_SIZE / r.wall, ok: true }
}

async function coldPhase(runs) {
  const steps = {
    direct: (path) => directOnce(`${cp.direct.url}${path}`),
    registry: (path) => directOnce(`${upstreamUrl}${path}`),
    toDisk: (path) => directToDiskOnce(`${cp.direct.url}${path}`),
    floor: (path) => writeFloorOnce(path),
    pullcache: (path) => coldOnce('pullcache', path),
    distribution: (path) => coldOnce('distribution', path),
    nginxCache: (path) => coldOnce('nginxCache', path),
  }
  const names = Object.keys(steps)
  const out = Object.fromEntries(names.map((n) => [n, []]))
  for (let i = 0; i < runs; i++) {
    // Rotated each round, so that no server always meets the machine first or last.
    const order = names.map((_, j) => names[(i + j) % names.length])
    log(`cold single GET, run ${i + 1}/${runs}: ${order.join(', ')}`)
    const path = nextColdBlob()
    for (const n of order) out[n].push(await steps[n](path))
  }
  return out
}

async function coalescedOnce(name, path, n) {
  const m = mirrors[name]
  await settle()
  await cp[name].reset()
  const rss = await peakRss(m.pids(), () =>
    withCpu(m.pids(), () => parallelGets(`${m.url}${path}`, BLOB_SIZE, n)),
  )
  return { ...rss.result, upstreamGets: await blobGets(cp[name]), peakRss: rss.peak }
}

/** CPU seconds the server used per GB (10^9 bytes) it sent, over all runs; null if not measured. */
const cpuPerGB = (runs, bytesPerRun) =>
  runs.every((r) => r.cpu !== undefined)
    ? runs.reduce((a, r) => a + r.cpu, 0) / ((runs.length * bytesPerRun) / 1e9)
    : null
const summarizeCold = (runs) => ({
  speed: median(runs.map((r) => r.speed)),
  cpuPerGB: cpuPerGB(runs, BLOB_SIZE),
  wall: median(runs.map((r) => r.wall)),
  ok: runs.every((r) => r.ok),
  upstreamGets: runs.map((r) => r.upstreamGets).filter((x) => x !== undefined),
  runs: runs.map((r) => ({ speed: r.speed, wall: r.wall, ok: r.ok, cpu: r.cpu })),
  min: Math.min(...runs.map((r) => r.speed)),
  max: Math.max(...runs.map((r) => r.speed)),
})
const summarizeCoalesced = (runs) => ({
  wall: median(runs.map((r) => r.wall)),
  cpuPerGB: cpuPerGB(runs, BLOB_SIZE * C.parallel),
  ok: runs.every((r) => r.ok),
  upstreamGets: runs.map((r) => r.upstreamGets),
  peakRss: Math.max(...runs.map((r) => r.peakRss)),
  runs: runs.map((r) => ({ wall: r.wall, ok: r.ok, upstreamGets: r.upstreamGets, statuses: r.statuses })),
})

{
  // A mirror in service has filled blobs before: one fill each, not measured, so that the first
  // measured one does not pay pullcache's JIT compiling the fill path (8-9 CPU s per GB once).
  const warmUp = nextColdBlob()
  for (const name of ['pullcache', 'distribution', 'nginxCache']) {
    log(`cold path warm-up, ${name}`)
    await settle()
    await curlGet(`${mirrors[name].url}${warmUp}`, BLOB_SIZE)
  }
  const cold = await coldPhase(C.coldRuns)
  for (const [k, v] of Object.entries(cold)) R.cold[k] = summarizeCold(v)
  const runs = { pullcache: [], distribution: [] }
  for (let i = 0; i < C.coalescedRuns; i++) {
    const path = nextColdBlob()
    for (const name of ['pullcache', 'distribution']) {
      log(`${C.parallel} concurrent cold GETs, ${name}, run ${i + 1}/${C.coalescedRuns}`)
      runs[name].push(await coalescedOnce(name, path, C.parallel))
    }
  }
  for (const name of ['pullcache', 'distribution']) R.coalesced[name] = summarizeCoalesced(runs[name])
}

// The same cold measurements over a slower upstream link (all three counting proxies share
// nothing; each throttles what passes through it to `link` MB/s): the case a mirror is for,
// where upstream and not the mirror's disk or loopback is the bottleneck.
if (opts.link > 0) {
  log(`slow link: upstream throttled to ${opts.link} MB/s`)
  for (const p of Object.values(cp)) await p.setRate(opts.link)
  const single = nextColdBlob()
  const direct = await directOnce(`${cp.direct.url}${single}`)
  const pc = await coldOnce('pullcache', single)
  const dist = await coldOnce('distribution', single)
  const shared = nextColdBlob()
  log(`slow link: ${C.parallel} concurrent cold GETs, pullcache`)
  const pcCo = await coalescedOnce('pullcache', shared, C.parallel)
  log(`slow link: ${C.parallel} concurrent cold GETs, distribution (it fetches once per client)`)
  const distCo = await coalescedOnce('distribution', shared, C.parallel)
  for (const p of Object.values(cp)) await p.setRate(0)
  R.slowLink = {
    mbps: opts.link,
    cold: {
      direct: summarizeCold([direct]),
      pullcache: summarizeCold([pc]),
      distribution: summarizeCold([dist]),
    },
    coalesced: { pullcache: summarizeCoalesced([pcCo]), distribution: summarizeCoalesced([distCo]) },
  }
}

// ---------------------------------------------------------------------------------------------
// Warm: the blob cached in both mirrors, against nginx reading the same file

/** GETs until a GET is served without any upstream request (distribution stores in the background). */
async function warmUp(name) {
  const m = mirrors[name]
  for (let i = 0; i < 40; i++) {
    await cp[name].reset()
    const r = await curlGet(`${m.url}${blobPath}`, BLOB_SIZE)
    if (r.ok && (await cp[name].counts()).total === 0) return
    await sleep(500)
  }
  throw new Error(`${name} does not serve the blob without going upstream`)
}

{
  // The warm blob, filled by one GET into each mirror (the same, long-running, processes).
  await settle()
  for (const name of ['pullcache', 'distribution']) {
    log(`warming ${name}`)
    await warmUp(name)
    await settle()
    await cp[name].reset()
  }
  const servers = {
    pullcache: mirrors.pullcache,
    distribution: mirrors.distribution,
    nginx: nginxServer,
    nginxOff: nginxOffServer,
  }
  const names = Object.keys(servers)
  const get = (n) => withCpu(servers[n].pids(), () => curlGet(`${servers[n].url}${blobPath}`, BLOB_SIZE))
  const getParallel = (n, clients) =>
    withCpu(servers[n].pids(), () => parallelGets(`${servers[n].url}${blobPath}`, BLOB_SIZE, clients))
  const single = Object.fromEntries(names.map((n) => [n, []]))
  for (let i = 0; i < C.warmRuns; i++) {
    log(`warm single GET, run ${i + 1}/${C.warmRuns}`)
    // Rotate the order so no server always runs first or last.
    for (let j = 0; j < names.length; j++) {
      const n = names[(i + j) % names.length]
      single[n].push(await get(n))
    }
  }
  const par = Object.fromEntries(names.map((n) => [n, []]))
  for (let i = 0; i < C.parallelRuns; i++) {
    log(`warm ${C.parallel} parallel GETs, run ${i + 1}/${C.parallelRuns}`)
    for (let j = 0; j < names.length; j++) {
      const n = names[(i + j) % names.length]
      par[n].push(await getParallel(n, C.parallel))
    }
  }
  for (const n of names) {
    R.warm[n] = {
      speed: median(single[n].map((r) => r.speed)),
      cpuPerGB: cpuPerGB(single[n], BLOB_SIZE),
      ok: single[n].every((r) => r.ok),
      runs: single[n].map((r) => r.speed),
      min: Math.min(...single[n].map((r) => r.speed)),
      max: Math.max(...single[n].map((r) => r.speed)),
    }
    R.parallel[n] = {
      aggregate: median(par[n].map((r) => r.aggregate)),
      cpuPerGB: cpuPerGB(par[n], BLOB_SIZE * C.parallel),
      ok: par[n].every((r) => r.ok),
      runs: par[n].map((r) => r.aggregate),
      wall: median(par[n].map((r) => r.wall)),
      min: Math.min(...par[n].map((r) => r.aggregate)),
      max: Math.max(...par[n].map((r) => r.aggregate)),
    }
  }
  for (const name of ['pullcache', 'distribution']) {
    R.warm[name].upstreamRequests = (await cp[name].counts()).total
  }

  // Peak RSS while 32 clients stream the cached blob at once.
  for (const [n, s] of Object.entries(servers)) {
    log(`peak RSS, ${C.rssStreams} concurrent warm streams, ${n}`)
    await sleep(500)
    const rss = await peakRss(s.pids(), () => getParallel(n, C.rssStreams))
    R.rss[n] = {
      peak: rss.peak,
      hwm: rss.hwm,
      sampled: rss.sampled,
      before: rss.before,
      processes: s.pids().length,
      aggregate: rss.result.aggregate,
      cpuPerGB: rss.result.cpu / ((C.rssStreams * BLOB_SIZE) / 1e9),
      ok: rss.result.ok,
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cached tag manifests: GET and HEAD of /v2/library/small/manifests/latest, Accept as dockerd sends

for (const name of ['pullcache', 'distribution']) {
  const m = mirrors[name]
  const url = `${m.url}${manifestPath}`
  // One GET caches the tag; the window starts after it.
  const res = await fetch(url, { headers: { accept: DOCKER_ACCEPT }, signal: AbortSignal.timeout(10_000) })
  await res.arrayBuffer()
  if (res.status !== 200) throw new Error(`${name}: tag GET answered ${res.status}`)
  await cp[name].reset()
  const started = performance.now()
  log(`manifests, ${name}: GET with wrk, HEAD and GET with ab, ${C.manifestSeconds} s each`)
  const wrk = await wrkGet(url, C.manifestSeconds, C.manifestConnections)
  const abHead = await abRequests(url, C.manifestSeconds, C.manifestConnections, { head: true })
  const abGet = await abRequests(url, C.manifestSeconds, C.manifestConnections, { head: false })
  const window = (performance.now() - started) / 1000
  const counts = await cp[name].counts()
  R.manifests[name] = { wrkGet: wrk, abHead, abGet, window, upstream: counts }
}

for (const m of Object.values(mirrors)) await m.daemon.stop()
for (const n of [nginxServer, nginxOffServer]) await n.daemon.stop()
for (const p of Object.values(cp)) await p.daemon.stop()
await upstream.stop()
R.seconds = (performance.now() - t0) / 1000
R.load.end = loadavg()

// ---------------------------------------------------------------------------------------------
// Report

const report = render(R)
process.stdout.write(report)
if (opts.json) writeFileSync(opts.json, `${JSON.stringify(R, null, 2)}\n`)

function render(r) {
  const mbs = (x) => (Number.isFinite(x) ? (x / MB).toFixed(0) : 'n/a')
  const mb = (x) => (Number.isFinite(x) ? (x / MB).toFixed(1) : 'n/a')
  const s = (x) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a')
  const x = (v) => (Number.isFinite(v) ? `${v.toFixed(2)}×` : 'n/a')
  const flag = (ok) => (ok ? '' : ' (ERRORS)')
  const cpu = (v) => (v === null || v === undefined || !Number.isFinite(v) ? 'n/a' : v.toFixed(2))
  const load = (l) => l.map((v) => v.toFixed(2)).join(' ')
  const lines = []
  const table = (head, rows) => {
    const all = [head, ...rows]
    const widths = head.map((_, i) => Math.max(...all.map((row) => String(row[i]).length)))
    const fmt = (row) => `| ${row.map((c, i) => String(c).padEnd(widths[i])).join(' | ')} |`
    lines.push(fmt(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(fmt), '')
  }
  const m = r.machine
  lines.push(
    `pullcache bench: ${m.cpu}, ${m.nproc} cores, ${m.memory}, kernel ${m.kernel}, node ${m.node}, ` +
      `${m.distribution}, ${m.nginx}`,
    `pullcache ${m.commit}${m.dirty ? ' with uncommitted changes in src/' : ''} (dist/ built ${m.distBuilt}); ` +
      `load average ${load(r.load.start)} at the start, ${load(r.load.end)} at the end`,
    `blob ${r.config.blobBytes} bytes (200 MiB); MB = 10^6 bytes; ${r.config.warmRuns} warm single runs, ` +
      `${r.config.parallelRuns} parallel runs, ${r.config.coldRuns} cold runs, ${r.config.coalescedRuns} ` +
      `coalesced runs (medians); bench took ${r.seconds.toFixed(0)} s`,
    ...(r.config.filledCache
      ? [
          `page cache filled first with ${(r.config.filledCache / 1024 ** 3).toFixed(0)} GiB of other files ` +
            '(--fill-cache): new page-cache pages are reclaimed ones, as on a host in service',
        ]
      : []),
    '',
  )
  const W = ['pullcache', 'distribution', 'nginx', 'nginxOff']
  /** Median and the spread of the runs (min–max), in MB/s. */
  const spreadOf = (v, median) => `${mbs(median)} (${mbs(v.min)}–${mbs(v.max)})${flag(v.ok)}`
  table(
    ['warm blob GET (cached)', 'pullcache', 'distribution', 'nginx, sendfile on', 'nginx, sendfile off'],
    [
      ['1 client, MB/s: median (min–max)', ...W.map((n) => spreadOf(r.warm[n], r.warm[n].speed))],
      [
        `${r.config.parallel} clients, aggregate MB/s: median (min–max)`,
        ...W.map((n) => spreadOf(r.parallel[n], r.parallel[n].aggregate)),
      ],
      [
        `peak RSS, ${r.config.rssStreams} streams, MB`,
        ...W.map(
          (n) =>
            `${mb(r.rss[n].peak)}${r.rss[n].processes > 1 ? ` (${r.rss[n].processes} processes)` : ''}${flag(r.rss[n].ok)}`,
        ),
      ],
      // What the server held already when the streams began: a peak can be memory kept from
      // the phases before (the allocator does not give back everything a cold fill touched).
      [`RSS before those ${r.config.rssStreams} streams, MB`, ...W.map((n) => mb(r.rss[n].before))],
      [`${r.config.rssStreams} clients, aggregate MB/s`, ...W.map((n) => mbs(r.rss[n].aggregate))],
      [
        'CPU s per GB sent: 1 / 16 / 32 clients',
        ...W.map(
          (n) => `${cpu(r.warm[n].cpuPerGB)} / ${cpu(r.parallel[n].cpuPerGB)} / ${cpu(r.rss[n].cpuPerGB)}`,
        ),
      ],
      ['idle RSS after start, MB', ...W.map((n) => mb(r.idleRss[n]))],
      [
        'upstream requests while warm',
        r.warm.pullcache.upstreamRequests,
        r.warm.distribution.upstreamRequests,
        '-',
        '-',
      ],
    ],
  )
  const C3 = ['pullcache', 'distribution', 'nginxCache']
  table(
    [
      'cold blob GET (nothing cached)',
      'pullcache',
      'distribution',
      'nginx proxy_cache',
      'direct from upstream',
    ],
    [
      [
        '1 client, MB/s: median (min–max)',
        ...C3.map((n) => spreadOf(r.cold[n], r.cold[n].speed)),
        `${spreadOf(r.cold.direct, r.cold.direct.speed)} (registry without the counting proxy: ${mbs(r.cold.registry.speed)})`,
      ],
      ['1 client, wall s', ...C3.map((n) => s(r.cold[n].wall)), s(r.cold.direct.wall)],
      [
        '1 client, CPU s per GB (GET and what it leaves running)',
        ...C3.map((n) => cpu(r.cold[n].cpuPerGB)),
        '-',
      ],
      ['1 client: MB/s / direct', ...C3.map((n) => x(r.cold[n].speed / r.cold.direct.speed)), '-'],
      [
        '1 client: MB/s / direct into a file (fsynced)',
        ...C3.map((n) => x(r.cold[n].speed / r.cold.toDisk.speed)),
        '-',
      ],
      ['upstream blob GETs per cold GET', ...C3.map((n) => r.cold[n].upstreamGets.join(', ')), '-'],
      [
        `${r.config.parallel} clients at once: upstream blob GETs`,
        r.coalesced.pullcache.upstreamGets.join(', '),
        r.coalesced.distribution.upstreamGets.join(', '),
        '-',
        '-',
      ],
      [
        `${r.config.parallel} clients at once: wall s`,
        s(r.coalesced.pullcache.wall) + flag(r.coalesced.pullcache.ok),
        s(r.coalesced.distribution.wall) + flag(r.coalesced.distribution.ok),
        '-',
        '-',
      ],
      [
        `${r.config.parallel} clients at once: wall / one cold GET`,
        x(r.coalesced.pullcache.wall / r.cold.pullcache.wall),
        x(r.coalesced.distribution.wall / r.cold.distribution.wall),
        '-',
        '-',
      ],
      [
        `${r.config.parallel} clients at once: wall / ${r.config.parallel} warm at once`,
        x(r.coalesced.pullcache.wall / r.parallel.pullcache.wall),
        x(r.coalesced.distribution.wall / r.parallel.distribution.wall),
        '-',
        '-',
      ],
      [
        `${r.config.parallel} clients at once: CPU s per GB sent`,
        cpu(r.coalesced.pullcache.cpuPerGB),
        cpu(r.coalesced.distribution.cpuPerGB),
        '-',
        '-',
      ],
      [
        `${r.config.parallel} clients at once: peak RSS MB`,
        mb(r.coalesced.pullcache.peakRss),
        mb(r.coalesced.distribution.peakRss),
        '-',
        '-',
      ],
    ],
  )
  if (r.cold.toDisk && r.cold.floor) {
    lines.push(
      'References in the same rounds: a client pulling straight from the upstream into a file it',
      `then fsyncs (curl + sync): ${spreadOf(r.cold.toDisk, r.cold.toDisk.speed)} MB/s, ` +
        `${cpu(r.cold.toDisk.cpuPerGB)} CPU s per GB on the client's side. The kernel's part of ` +
        `keeping the blob alone (dd of the blob's file into a new file, fsynced): ` +
        `${spreadOf(r.cold.floor, r.cold.floor.speed)} MB/s, ${cpu(r.cold.floor.cpuPerGB)} CPU s per GB; ` +
        `per round ${r.cold.floor.runs.map((f) => cpu(f.cpu / (BLOB_SIZE / 1e9))).join(', ')}.`,
      '',
    )
  }
  if (r.slowLink) {
    const k = r.slowLink
    table(
      [`cold, upstream link ${k.mbps} MB/s (1 run)`, 'pullcache', 'distribution', 'direct from upstream'],
      [
        [
          '1 client, MB/s',
          mbs(k.cold.pullcache.speed),
          mbs(k.cold.distribution.speed),
          mbs(k.cold.direct.speed),
        ],
        ['1 client, wall s', s(k.cold.pullcache.wall), s(k.cold.distribution.wall), s(k.cold.direct.wall)],
        [
          `${r.config.parallel} clients at once: upstream blob GETs`,
          k.coalesced.pullcache.upstreamGets.join(', '),
          k.coalesced.distribution.upstreamGets.join(', '),
          '-',
        ],
        [
          `${r.config.parallel} clients at once: wall s`,
          s(k.coalesced.pullcache.wall) + flag(k.coalesced.pullcache.ok),
          s(k.coalesced.distribution.wall) + flag(k.coalesced.distribution.ok),
          '-',
        ],
        [
          `${r.config.parallel} clients at once: wall / one cold GET`,
          x(k.coalesced.pullcache.wall / k.cold.pullcache.wall),
          x(k.coalesced.distribution.wall / k.cold.distribution.wall),
          '-',
        ],
      ],
    )
  }
  const mf = r.manifests
  const rps = (t) =>
    `${Number.isFinite(t.rps) ? t.rps.toFixed(0) : 'n/a'}${t.ok ? '' : ` (${t.errors} errors)`}`
  const upstreamText = (u) =>
    `${u.total}${
      u.total
        ? ` (${Object.entries(u.byKind)
            .map(([k2, v]) => `${k2} ${v}`)
            .join(', ')})`
        : ''
    }`
  table(
    [`cached tag manifest, ${r.config.manifestConnections} connections`, 'pullcache', 'distribution'],
    [
      ['GET req/s (wrk)', rps(mf.pullcache.wrkGet), rps(mf.distribution.wrkGet)],
      ['HEAD req/s (ab -k -i)', rps(mf.pullcache.abHead), rps(mf.distribution.abHead)],
      ['GET req/s (ab -k)', rps(mf.pullcache.abGet), rps(mf.distribution.abGet)],
      [
        'requests in the window',
        mf.pullcache.wrkGet.requests + mf.pullcache.abHead.requests + mf.pullcache.abGet.requests,
        mf.distribution.wrkGet.requests + mf.distribution.abHead.requests + mf.distribution.abGet.requests,
      ],
      [
        'upstream requests in the window',
        upstreamText(mf.pullcache.upstream),
        upstreamText(mf.distribution.upstream),
      ],
      ['window, s', s(mf.pullcache.window), s(mf.distribution.window)],
    ],
  )

  const targets = [
    ['warm, 1 client: pullcache / distribution', r.warm.pullcache.speed / r.warm.distribution.speed, 1.5],
    ['warm, 1 client: pullcache / nginx', r.warm.pullcache.speed / r.warm.nginx.speed, 0.8],
    [
      `warm, ${r.config.parallel} clients: pullcache / distribution`,
      r.parallel.pullcache.aggregate / r.parallel.distribution.aggregate,
      1.5,
    ],
    [
      `warm, ${r.config.parallel} clients: pullcache / nginx`,
      r.parallel.pullcache.aggregate / r.parallel.nginx.aggregate,
      0.8,
    ],
    ['cold, 1 client: pullcache / direct from upstream', r.cold.pullcache.speed / r.cold.direct.speed, 0.9],
  ].map(([what, value, min]) => [what, x(value), `≥ ${min}×`, value >= min ? 'PASS' : 'MISS'])
  const ceil = (what, value, max, unit = '×') => [
    what,
    unit === '×' ? x(value) : `${cpu(value)}${unit}`,
    `≤ ${max}${unit}`,
    value <= max ? 'PASS' : 'MISS',
  ]
  targets.push(
    ceil('cold, 1 client: pullcache CPU s per GB', r.cold.pullcache.cpuPerGB, 2.0, ' s'),
    ceil(
      'cold, 1 client: pullcache / distribution CPU per GB',
      r.cold.pullcache.cpuPerGB / r.cold.distribution.cpuPerGB,
      0.4,
    ),
    ceil(
      'warm, 1 client: pullcache / nginx (sendfile) CPU per GB',
      r.warm.pullcache.cpuPerGB / r.warm.nginx.cpuPerGB,
      1.05,
    ),
    ceil(
      `cold, ${r.config.parallel} at once: wall / ${r.config.parallel} warm at once`,
      r.coalesced.pullcache.wall / r.parallel.pullcache.wall,
      1.2,
    ),
    ceil('idle RSS of pullcache after start, MB', r.idleRss.pullcache / MB, 60, ' MB'),
  )
  const coGets = r.coalesced.pullcache.upstreamGets
  targets.push([
    `cold, ${r.config.parallel} clients at once: upstream blob GETs (per run)`,
    coGets.join(', '),
    '= 1',
    coGets.every((g) => g === 1) ? 'PASS' : 'MISS',
  ])
  const coRatio = r.coalesced.pullcache.wall / r.cold.pullcache.wall
  targets.push([
    `cold, ${r.config.parallel} clients at once: wall / one cold GET`,
    x(coRatio),
    '≤ 1.2×',
    coRatio <= 1.2 && r.coalesced.pullcache.ok ? 'PASS' : 'MISS',
  ])
  if (r.slowLink) {
    const k = r.slowLink
    const ratio = k.coalesced.pullcache.wall / k.cold.pullcache.wall
    targets.push([
      `(slow link ${k.mbps} MB/s) cold, 1 client: pullcache / direct`,
      x(k.cold.pullcache.speed / k.cold.direct.speed),
      '≥ 0.9×',
      k.cold.pullcache.speed / k.cold.direct.speed >= 0.9 ? 'PASS' : 'MISS',
    ])
    targets.push([
      `(slow link ${k.mbps} MB/s) ${r.config.parallel} at once: upstream GETs; wall / one`,
      `${k.coalesced.pullcache.upstreamGets.join(', ')}; ${x(ratio)}`,
      '= 1; ≤ 1.2×',
      k.coalesced.pullcache.upstreamGets.every((g) => g === 1) && ratio <= 1.2 && k.coalesced.pullcache.ok
        ? 'PASS'
        : 'MISS',
    ])
  }
  for (const [label, key] of [
    ['GET (wrk)', 'wrkGet'],
    ['HEAD (ab)', 'abHead'],
    ['GET (ab)', 'abGet'],
  ]) {
    const v = mf.pullcache[key].rps / mf.distribution[key].rps
    targets.push([
      `cached tag manifest ${label}: pullcache / distribution`,
      x(v),
      '≥ 5×',
      v >= 5 && mf.pullcache[key].ok ? 'PASS' : 'MISS',
    ])
  }
  targets.push([
    'cached tag manifests: pullcache upstream requests in the window',
    String(mf.pullcache.upstream.total),
    '= 0',
    mf.pullcache.upstream.total === 0 ? 'PASS' : 'MISS',
  ])
  targets.push([
    `peak RSS of pullcache, ${r.config.rssStreams} concurrent 200 MiB streams`,
    `${mb(r.rss.pullcache.peak)} MB`,
    '≤ 120 MB',
    r.rss.pullcache.peak <= 120 * MB && r.rss.pullcache.ok ? 'PASS' : 'MISS',
  ])
  table(['target', 'measured', 'target', 'result'], targets)
  const missed = targets.filter((t) => t[3] === 'MISS').length
  lines.push(
    `${targets.length - missed} of ${targets.length} targets met${missed ? `, ${missed} missed` : ''}`,
    '',
  )
  return lines.join('\n')
}

async function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  const meminfo = readFileSync('/proc/meminfo', 'utf8')
  const memKb = Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0)
  // git's answer about the tree dist/ was built from, or null where that is no git checkout (a
  // build copied elsewhere for an A/B): its error text is no commit.
  const git = async (args) => {
    try {
      const out = await run('git', ['-C', BUILT_FROM, ...args], { timeoutMs: 10_000 })
      return out.code === 0 ? out.stdout : null
    } catch {
      return null
    }
  }
  const version = async (cmd, args, re) => {
    try {
      const out = await run(cmd, args, { timeoutMs: 10_000 })
      return (re.exec(out.stdout + out.stderr)?.[1] ?? '?').trim()
    } catch {
      return '?'
    }
  }
  return {
    nproc: Number((await run('nproc', [])).stdout.trim()),
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.trim() ?? '?',
    memory: `${(memKb / 1024 / 1024).toFixed(1)} GiB`,
    kernel: (await run('uname', ['-r'])).stdout.trim(),
    node: process.version,
    distribution: `distribution ${await version('docker-registry', ['--version'], /distribution (\S+)/)}`,
    nginx: `nginx ${await version(existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx', ['-v'], /nginx\/(\S+)/)}`,
    curl: await version('curl', ['--version'], /^curl (\S+)/),
    wrk: await version('wrk', ['-v'], /wrk (\S+)/),
    // What was measured: the dist/ copied at the start, built from the tree it came from
    // (read-only git queries).
    distBuilt: statSync(join(APP, 'dist', 'main.js'))
      .mtime.toISOString()
      .replace('T', ' ')
      .slice(0, 19),
    commit: (await git(['rev-parse', '--short', 'HEAD']))?.trim() ?? 'from outside a git checkout',
    dirty: ((await git(['status', '--porcelain', '--', 'src'])) ?? '') !== '',
  }
}
