// One mirror, cold blobs only: the quick loop for working on the cold path, apart from the full
// bench. Starts the upstream registry (bench/lib/data.mjs's storage, no counting proxy, so the
// two cores are shared by fewer processes) and one long-running pullcache, then GETs N blobs
// pullcache has never seen, one at a time, with curl, and reports for each the wall rate and
// pullcache's CPU (utime + stime from /proc) per GB. The first GET also warms the JIT; the
// figures after it are the ones a mirror in service shows.
//
//   npm run build && node bench/cold.mjs [--runs N] [--size MiB] [--profile DIR] [--direct] [--main FILE]...
//
//   --main FILE     the main.js to run (default dist/main.js); given more than once, one pullcache
//                   per build, GETs rotated among them each round: an A/B on a machine whose load
//                   moves (its dist/ needs a node_modules beside or above it)
//   --node-arg ARG  passed to node before main.js (e.g. --trace-gc; the output is in the kept logs)
//   --profile DIR   pullcache under `node --cpu-prof`; prints the window of the measured GETs
//                   (seconds since pullcache started) for bench/profile-summary.mjs --after/--before
//   --direct        also GET each blob straight from the upstream first (wall only)
//   --proxy         put bench/counting-proxy.mjs between the registry and pullcache, as bench/run does
//   --gap S         idle S seconds before each cold GET, as a mirror between pulls is (and bench/run's
//                   mirrors between measurements): V8 shrinks an idle heap, and the next GET pays for it
//   --floors        after each round, in the same rotated order, what the same blob costs from the
//                   same registry with less than a mirror does (bench/lib/floor-child.mjs): curl to
//                   /dev/null; node over a raw socket + sha256; node's http client + sha256; undici
//                   + sha256 (the fill's way in) and without the hash; sha256 alone; fresh memory
//                   written, first and again. At the end, resident memory of node alone and with the
//                   dependencies imported, beside pullcache's own after start
// Everything it writes goes under a temp dir that is removed at the end (BENCH_KEEP=1 keeps it).
import { mkdirSync, mkdtempSync, readdirSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { cpuSeconds, curlGet, median, rssOf, timedShell } from './lib/measure.mjs'
import { pullcacheNodeFlags } from './lib/node-flags.mjs'
import { freePort, listeningLine, procStat, removeTree, run, sleep, startDaemon } from './lib/procs.mjs'
import { startUpstream } from './lib/registry.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const MiB = 1024 * 1024
const o = {
  runs: 4,
  size: 200,
  profile: null,
  direct: false,
  mains: [],
  nodeArgs: [],
  proxy: false,
  gap: 0,
  floors: false,
}
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i]
  if (a === '--runs') o.runs = Number(process.argv[++i])
  else if (a === '--size') o.size = Number(process.argv[++i])
  else if (a === '--profile') o.profile = resolve(process.argv[++i])
  else if (a === '--direct') o.direct = true
  else if (a === '--proxy') o.proxy = true
  else if (a === '--floors') o.floors = true
  else if (a === '--gap') o.gap = Number(process.argv[++i])
  else if (a === '--main') o.mains.push(resolve(process.argv[++i]))
  else if (a === '--node-arg') o.nodeArgs.push(process.argv[++i])
  else {
    process.stderr.write(`cold.mjs: unknown option ${a}\n`)
    process.exit(2)
  }
}
if (o.mains.length === 0) o.mains.push(join(ROOT, 'dist', 'main.js'))
const size = o.size * MiB
const work = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'pullcache-cold.'))
const logDir = join(work, 'logs')
mkdirSync(logDir, { recursive: true })
const log = (m) => process.stderr.write(`[cold] ${m}\n`)
const daemons = []
try {
  log(`writing ${o.runs} random blobs of ${o.size} MiB under ${work}`)
  const {
    data,
    daemon: registryDaemon,
    url: registry,
  } = await startUpstream({ work, logDir, size, count: o.runs })
  daemons.push(registryDaemon)
  // Through the bench's counting proxy (a Node server), as bench/run has it, or straight.
  let upstream = registry
  if (o.proxy) {
    const proxy = await startDaemon(
      'proxy',
      process.execPath,
      [join(ROOT, 'bench', 'counting-proxy.mjs'), '--target', registry, '--listen', '127.0.0.1:0'],
      { logDir, ready: listeningLine },
    )
    daemons.push(proxy)
    upstream = proxy.ready
  }
  const env = { ...process.env }
  for (const k of Object.keys(env)) if (k.startsWith('PULLCACHE_')) delete env[k]
  // One long-running pullcache per build under test, each with its own empty data dir.
  const servers = []
  for (const [n, main] of o.mains.entries()) {
    const port = await freePort()
    const name = o.mains.length > 1 ? `pullcache-${n + 1}` : 'pullcache'
    const nodeArgs = o.profile
      ? ['--cpu-prof', `--cpu-prof-dir=${o.profile}`, `--cpu-prof-name=${name}.cpuprofile`]
      : []
    // As users run it (npm start's flags, from the tree the build is in), then the options'.
    nodeArgs.unshift(...pullcacheNodeFlags(dirname(dirname(main))))
    nodeArgs.push(...o.nodeArgs)
    const startedAt = performance.now()
    const d = await startDaemon(name, process.execPath, [...nodeArgs, main, 'serve'], {
      env: {
        ...env,
        PULLCACHE_LISTEN: `127.0.0.1:${port}`,
        PULLCACHE_DATA_DIR: join(work, `data-${n + 1}`),
        PULLCACHE_UPSTREAM: upstream,
        PULLCACHE_ACCESS_LOG: 'false',
      },
      logDir,
      ready: listeningLine,
    })
    daemons.push(d)
    servers.push({ name, main, pid: d.pid, url: `http://127.0.0.1:${port}`, startedAt, rows: [], warm: [] })
  }
  if (o.floors) {
    // As bench/run reads it: one second after the server is up.
    await sleep(1000)
    for (const s of servers) s.idleRss = rssOf([s.pid])
  }
  const floors = new Map()
  const since = (s) => ((performance.now() - s.startedAt) / 1000).toFixed(2)
  /** One GET through `s`; CPU of its process over the GET and the fill's commit after it. */
  const measured = async (s, path) => {
    const from = since(s)
    const cpu0 = cpuSeconds([s.pid])
    const threads0 = threadTicks(s.pid)
    const faults0 = minorFaults(s.pid)
    const r = await curlGet(`${s.url}${path}`, size)
    // The fill fsyncs and commits after the last byte is out; its CPU belongs to the GET.
    await new Promise((res) => setTimeout(res, 300))
    const cpu = cpuSeconds([s.pid]) - cpu0
    const threads = threadTicks(s.pid)
    const faults = minorFaults(s.pid) - faults0
    for (const [k, v] of threads) threads.set(k, (v - (threads0.get(k) ?? 0)) / 100)
    return {
      ok: r.ok,
      mbps: r.speed / 1e6,
      cpuPerGB: cpu / (size / 1e9),
      // Pages the process touched for the first time (all threads): page-cache pages of the
      // temp file and fresh anonymous memory; each is a fault the kernel serves.
      faultsPerMiB: faults / (size / MiB),
      from,
      to: since(s),
      // CPU seconds by thread (user and system apart): the main thread, then libuv's and V8's.
      threads: Object.fromEntries([...threads].filter(([, v]) => v > 0)),
    }
  }
  const directs = []
  // The floors read the first cold blob, which pullcache has by the end of the first round.
  const first = data.coldBlobs[0]
  for (const [i, b] of data.coldBlobs.entries()) {
    const path = `/v2/${b.repo}/blobs/${b.digest}`
    if (o.direct) directs.push((await curlGet(`${upstream}${path}`, size)).speed / 1e6)
    // Rotated, so that no build always meets the machine first.
    for (let j = 0; j < servers.length; j++) {
      const s = servers[(i + j) % servers.length]
      if (o.gap > 0) await new Promise((res) => setTimeout(res, o.gap * 1000))
      const row = await measured(s, path)
      s.rows.push(row)
      log(`${s.name} cold ${i + 1}: ${JSON.stringify(row)}`)
    }
    if (o.floors)
      await floorRound(floors, i, `${registry}/v2/${first.repo}/blobs/${first.digest}`, first.path)
  }
  // The same processes serving a blob they now have: the cost of the client side alone.
  for (let i = 0; i < Math.max(2, o.runs - 1); i++) {
    for (let j = 0; j < servers.length; j++) {
      const s = servers[(i + j) % servers.length]
      s.warm.push(await measured(s, `/v2/${first.repo}/blobs/${first.digest}`))
    }
  }
  const load = loadavg()
    .map((v) => v.toFixed(2))
    .join(' ')
  const spread = (xs, digits) =>
    `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`
  log(
    `load average ${load}${o.direct ? `; direct from the registry ${spread(directs.slice(1), 0)} MB/s` : ''}`,
  )
  for (const s of servers) {
    // The first cold GET also warms the JIT: left out of the figures.
    const later = s.rows.length > 1 ? s.rows.slice(1) : s.rows
    const ok = s.rows.every((r) => r.ok) && s.warm.every((r) => r.ok)
    log(
      `${s.name} (${s.main}): cold ${spread(
        later.map((r) => r.mbps),
        0,
      )} MB/s, ` +
        `${spread(
          later.map((r) => r.cpuPerGB),
          2,
        )} CPU s/GB; warm ${spread(
          s.warm.map((r) => r.mbps),
          0,
        )} MB/s, ` +
        `${spread(
          s.warm.map((r) => r.cpuPerGB),
          2,
        )} CPU s/GB${ok ? '' : ' (ERRORS)'}`,
    )
    if (o.floors) log(`${s.name}: resident memory 1 s after start ${(s.idleRss / 1e6).toFixed(1)} MB`)
    log(`${s.name}: resident memory after the rounds ${(rssOf([s.pid]) / 1e6).toFixed(1)} MB`)
    if (o.profile)
      log(`${s.name} profile window, cold GETs 2..: --after ${later[0].from} --before ${later.at(-1).to}`)
  }
  if (o.floors) await floorReport(floors, spread)
} finally {
  for (const d of daemons.reverse()) await d.stop()
  if (process.env.BENCH_KEEP === '1') log(`kept ${work}`)
  else removeTree(work)
}

/** Minor page faults of a process so far, all its threads (/proc/PID/stat field 10). */
function minorFaults(pid) {
  return Number(procStat(pid).fields[7])
}

/** Clock ticks by thread name (comm), user+system and each apart, for one process. */
function threadTicks(pid) {
  const out = new Map()
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const { comm, fields: f } = procStat(`${pid}/task/${tid}`)
      const name = tid === String(pid) ? 'main' : process.env.COLD_TIDS === '1' ? `${comm}#${tid}` : comm
      out.set(`${name} user`, (out.get(`${name} user`) ?? 0) + Number(f[11]))
      out.set(`${name} sys`, (out.get(`${name} sys`) ?? 0) + Number(f[12]))
    } catch {}
  }
  return out
}

/** A floor measurement in a node process of its own, with pullcache's node flags; its JSON lines. */
async function floorChild(...args) {
  const child = join(ROOT, 'bench', 'lib', 'floor-child.mjs')
  const { code, stdout, stderr } = await run(
    process.execPath,
    [...pullcacheNodeFlags(ROOT), child, ...args],
    {
      timeoutMs: 300_000,
    },
  )
  if (code !== 0) throw new Error(`floor-child ${args.join(' ')} failed: ${stderr.slice(-500)}`)
  return stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line))
}

/** One round of the floors (see --floors), rotated by `round`; adds to `floors` by name. */
async function floorRound(floors, round, url, file) {
  const measures = [
    [
      'curl to /dev/null',
      async () => [{ ...(await timedShell(`curl -s -o /dev/null ${url}`)), bytes: size }],
    ],
    ['node, raw socket + sha256', () => floorChild('read', 'net', url, size)],
    ["node's http client + sha256", () => floorChild('read', 'http', url, size)],
    ["undici + sha256 (the fill's way in)", () => floorChild('read', 'undici', url, size)],
    ['undici, no hash', () => floorChild('read', 'undici-nohash', url, size)],
    ['sha256 alone, bytes in memory', () => floorChild('hash', file)],
    // Two lines, each named in its `as`: the first write of fresh memory, then the same again.
    ['fresh memory', () => floorChild('touch', size)],
  ]
  for (let j = 0; j < measures.length; j++) {
    const [name, measure] = measures[(round + j) % measures.length]
    for (const r of await measure()) {
      const got = floors.get(r.as ?? name) ?? { cpuPerGB: [], mbps: [] }
      got.cpuPerGB.push(r.cpu / (r.bytes / 1e9))
      got.mbps.push(r.bytes / 1e6 / r.wall)
      floors.set(r.as ?? name, got)
    }
  }
}

/** The floors' figures, then node's resident memory with and without the dependencies. */
async function floorReport(floors, spread) {
  log('floors, same blob, same registry, rounds rotated (CPU s/GB; MB/s):')
  for (const [name, got] of floors) {
    log(`  ${name}: ${spread(got.cpuPerGB, 2)} CPU s/GB; ${spread(got.mbps, 0)} MB/s`)
  }
  // The design card's fixed dependencies, then everything serve loads from node_modules.
  const fixed = ['hono', '@hono/node-server', 'undici', 'better-sqlite3', 'lru-cache', 'p-limit']
  const sets = [
    // floor-child.mjs itself has node's http, net and crypto loaded, as serve has.
    ['node with its http, net and crypto modules', []],
    ['node + hono, @hono/node-server, undici, better-sqlite3, lru-cache, p-limit', fixed],
    ['the same + zod, prom-client, bcryptjs', [...fixed, 'zod', 'prom-client', 'bcryptjs']],
  ]
  for (const [name, modules] of sets) {
    const rss = []
    for (let i = 0; i < 3; i++) rss.push((await floorChild('rss', ...modules))[0].rss / 1e6)
    log(`  resident memory, ${name}: ${spread(rss, 1)} MB`)
  }
}
