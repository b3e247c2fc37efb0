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
// Everything it writes goes under a temp dir that is removed at the end (BENCH_KEEP=1 keeps it).
import { mkdirSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildUpstreamData } from './lib/data.mjs'
import { cpuSeconds, curlGet, median } from './lib/measure.mjs'
import { pullcacheNodeFlags } from './lib/node-flags.mjs'
import { freePort, listeningLine, removeTree, startDaemon } from './lib/procs.mjs'
import { startRegistry } from './lib/registry.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const MiB = 1024 * 1024
const o = { runs: 4, size: 200, profile: null, direct: false, mains: [], nodeArgs: [], proxy: false, gap: 0 }
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i]
  if (a === '--runs') o.runs = Number(process.argv[++i])
  else if (a === '--size') o.size = Number(process.argv[++i])
  else if (a === '--profile') o.profile = resolve(process.argv[++i])
  else if (a === '--direct') o.direct = true
  else if (a === '--proxy') o.proxy = true
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
  const data = buildUpstreamData(join(work, 'upstream'), work, size, o.runs)
  const upstreamRegistry = await startRegistry('upstream', {
    configDir: work,
    logDir,
    storage: join(work, 'upstream'),
  })
  daemons.push(upstreamRegistry.daemon)
  const registry = upstreamRegistry.url
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
  const since = (s) => ((performance.now() - s.startedAt) / 1000).toFixed(2)
  /** One GET through `s`; CPU of its process over the GET and the fill's commit after it. */
  const measured = async (s, path) => {
    const from = since(s)
    const cpu0 = cpuSeconds([s.pid])
    const threads0 = threadTicks(s.pid)
    const r = await curlGet(`${s.url}${path}`, size)
    // The fill fsyncs and commits after the last byte is out; its CPU belongs to the GET.
    await new Promise((res) => setTimeout(res, 300))
    const cpu = cpuSeconds([s.pid]) - cpu0
    const threads = threadTicks(s.pid)
    for (const [k, v] of threads) threads.set(k, (v - (threads0.get(k) ?? 0)) / 100)
    return {
      ok: r.ok,
      mbps: r.speed / 1e6,
      cpuPerGB: cpu / (size / 1e9),
      from,
      to: since(s),
      // CPU seconds by thread (user and system apart): the main thread, then libuv's and V8's.
      threads: Object.fromEntries([...threads].filter(([, v]) => v > 0)),
    }
  }
  const directs = []
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
  }
  // The same processes serving a blob they now have: the cost of the client side alone.
  const first = data.coldBlobs[0]
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
    if (o.profile)
      log(`${s.name} profile window, cold GETs 2..: --after ${later[0].from} --before ${later.at(-1).to}`)
  }
} finally {
  for (const d of daemons.reverse()) await d.stop()
  if (process.env.BENCH_KEEP === '1') log(`kept ${work}`)
  else removeTree(work)
}

/** Clock ticks by thread name (comm), user+system and each apart, for one process. */
function threadTicks(pid) {
  const out = new Map()
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const name = tid === String(pid) ? 'main' : process.env.COLD_TIDS === '1' ? `${comm}#${tid}` : comm
      out.set(`${name} user`, (out.get(`${name} user`) ?? 0) + Number(f[11]))
      out.set(`${name} sys`, (out.get(`${name} sys`) ?? 0) + Number(f[12]))
    } catch {}
  }
  return out
}
