// A large store: how long pullcache takes to start (clean, and after kill -9), to serve its first
// hit, to reconcile in the background, to evict 10% of the store, and to answer stats, status page
// and /metrics; its RSS at rest and the worst stall a client sees meanwhile. distribution's proxy
// mode (`docker-registry`) is started on a store of the same size for comparison.
//
//   npm run build && node bench/large-store.mjs [--blobs N] [--tags N] [--no-distribution] [--json FILE]
//
// The stores are written straight into each server's layout (8-byte blobs named by their sha256,
// index rows inserted in one transaction), under a temp dir that is removed at the end, also when
// interrupted. Only loopback; the upstream URL points at a closed port and is never needed.
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, statfsSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { freePort, removeTree, sleep } from './lib/procs.mjs'

const { values } = parseArgs({
  options: {
    blobs: { type: 'string', default: '200000' },
    tags: { type: 'string', default: '100000' },
    'no-distribution': { type: 'boolean' },
    json: { type: 'string' },
  },
})
const BLOBS = Number(values.blobs)
const TAGS = Number(values.tags)
const DIST = new URL('../dist/', import.meta.url)
const { IndexDb } = await import(new URL('store/index-db.js', DIST).href)
const MAIN = new URL('main.js', DIST).pathname

const work = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'pullcache-large-'))
const children = new Set()
let cleaned = false
function cleanup() {
  if (cleaned) return
  cleaned = true
  for (const c of children) {
    try {
      c.kill('SIGKILL')
    } catch {}
  }
  removeTree(work)
}
process.on('exit', cleanup)
for (const s of ['SIGINT', 'SIGTERM']) {
  process.on(s, () => {
    cleanup()
    process.exit(130)
  })
}

const figures = { blobs: BLOBS, tags: TAGS }
const say = (...a) => console.log(...a)

// --- the stores ------------------------------------------------------------------------------

function blobBytes(i) {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(i) ^ 0x5eed_0000_0000_0000n)
  return b
}
const hexOf = (i) => createHash('sha256').update(blobBytes(i)).digest('hex')

const pcRoot = join(work, 'pullcache')
const distRoot = join(work, 'distribution')
const probe = hexOf(Math.floor(BLOBS / 2))
/** A closed port: pullcache runs offline and never needs its upstream here. */
const UPSTREAM_HOST = '127.0.0.1:9'

let t0 = performance.now()
{
  const blobDir = join(pcRoot, 'blobs', 'sha256')
  for (let p = 0; p < 256; p++) mkdirSync(join(blobDir, p.toString(16).padStart(2, '0')), { recursive: true })
  const index = new IndexDb(join(pcRoot, 'index.db'))
  const db = index.database
  const insert = db.prepare(
    'INSERT INTO blobs (digest, size, allocated, first_cached, last_access) VALUES (?, ?, ?, ?, ?)',
  )
  const base = Date.now() - BLOBS
  let allocated
  const CHUNK = 10_000
  for (let start = 0; start < BLOBS; start += CHUNK) {
    const rows = []
    for (let i = start; i < Math.min(BLOBS, start + CHUNK); i++) {
      const hex = hexOf(i)
      const path = join(blobDir, hex.slice(0, 2), hex)
      writeFileSync(path, blobBytes(i))
      allocated ??= statSync(path).blocks * 512
      rows.push([`sha256:${hex}`, 8, allocated, base + i, base + i])
    }
    db.transaction(() => {
      for (const r of rows) insert.run(...r)
    })()
  }
  const tag = db.prepare(
    "INSERT INTO tags (registry, repo, tag, digest, media_type, last_checked) VALUES ('registry-1.docker.io', ?, ?, ?, 'application/vnd.oci.image.manifest.v1+json', ?)",
  )
  const tagStat = db.prepare(
    "INSERT INTO tag_stats (registry, repo, tag, requests, hits, last_request) VALUES ('registry-1.docker.io', ?, ?, ?, ?, ?)",
  )
  db.transaction(() => {
    for (let i = 0; i < TAGS; i++) {
      const repo = `team${i % 500}/app${i % 7}`
      tag.run(repo, `v${i}`, `sha256:${hexOf(BLOBS + i)}`, Date.now())
      tagStat.run(repo, `v${i}`, i % 97, i % 89, Date.now() - i)
    }
  })()
  // The probe blob linked to a public repository (as a pull through pullcache leaves it), so
  // that an anonymous client may read it without asking upstream, which this bench never has.
  const registry = UPSTREAM_HOST
  db.prepare(
    "INSERT INTO repo_links (registry, repo, digest, kind) VALUES (?, 'library/probe', ?, 'blob')",
  ).run(registry, `sha256:${probe}`)
  db.prepare(
    "INSERT INTO repo_access (registry, repo, access, checked_at) VALUES (?, 'library/probe', 'public', ?)",
  ).run(registry, Date.now())
  index.close() // a built store has no clean-shutdown mark: the first start reconciles
  figures.block_size = statfsSync(blobDir).bsize
  figures.allocated_per_blob = allocated
}
figures.build_pullcache_s = secs(t0)
say(`pullcache store: ${BLOBS} blobs, ${TAGS} tags, built in ${figures.build_pullcache_s} s`)

if (!values['no-distribution']) {
  t0 = performance.now()
  const blobs = join(distRoot, 'docker', 'registry', 'v2', 'blobs', 'sha256')
  for (let i = 0; i < BLOBS; i++) {
    const hex = hexOf(i)
    const dir = join(blobs, hex.slice(0, 2), hex)
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'data'), blobBytes(i))
  }
  // The probe blob linked into a repository, so that distribution can serve it from its store.
  const link = join(distRoot, 'docker/registry/v2/repositories/library/probe/_layers/sha256', probe)
  mkdirSync(link, { recursive: true })
  writeFileSync(join(link, 'link'), `sha256:${probe}`)
  figures.build_distribution_s = secs(t0)
  say(`distribution store: built in ${figures.build_distribution_s} s`)
}

// --- pullcache -------------------------------------------------------------------------------

const probePath = `/v2/library/probe/blobs/sha256:${probe}`

/** Starts pullcache; resolves once it prints "listening", with the times from spawn. */
async function startPullcache(extraEnv = {}, dataDir = pcRoot) {
  const port = await freePort()
  const spawned = performance.now()
  const child = spawn(process.execPath, [MAIN, 'serve'], {
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PULLCACHE_'))),
      PULLCACHE_DATA_DIR: dataDir,
      PULLCACHE_LISTEN: `127.0.0.1:${port}`,
      PULLCACHE_UPSTREAM: `http://${UPSTREAM_HOST}`,
      PULLCACHE_ACCESS_LOG: 'false',
      PULLCACHE_OFFLINE: 'true',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.add(child)
  const events = new Map()
  const waiters = []
  let buffered = ''
  child.stdout.setEncoding('utf8').on('data', (s) => {
    buffered += s
    let nl = buffered.indexOf('\n')
    while (nl >= 0) {
      const line = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      nl = buffered.indexOf('\n')
      try {
        const e = JSON.parse(line)
        if (!events.has(e.event)) events.set(e.event, { at: performance.now() - spawned, ...e })
        for (const w of waiters.splice(0)) w()
      } catch {}
    }
  })
  child.stderr.setEncoding('utf8').on('data', (s) => process.stderr.write(s))
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const server = {
    url: `http://127.0.0.1:${port}`,
    pid: child.pid,
    spawned,
    events,
    async event(name, timeoutMs = 600_000) {
      const deadline = performance.now() + timeoutMs
      while (!events.has(name)) {
        if (performance.now() > deadline) throw new Error(`pullcache: no ${name} within ${timeoutMs} ms`)
        if (child.exitCode !== null) throw new Error(`pullcache exited before ${name}`)
        await Promise.race([new Promise((r) => waiters.push(r)), sleep(200)])
      }
      return events.get(name)
    },
    async stop() {
      child.kill('SIGTERM')
      await exited
      children.delete(child)
    },
    async kill9() {
      child.kill('SIGKILL')
      await exited
      children.delete(child)
    },
  }
  await server.event('listening', 120_000)
  return server
}

/** Polls the probe blob until it answers 200 with its 8 bytes; ms from spawn. */
async function firstHit(server) {
  for (let i = 0; i < 60_000; i++) {
    try {
      const res = await fetch(`${server.url}${probePath}`)
      const body = Buffer.from(await res.arrayBuffer())
      if (res.status === 200 && body.length === 8) return performance.now() - server.spawned
    } catch {}
    await sleep(5)
  }
  throw new Error('no hit')
}

/**
 * While `until` is pending: a hit every 20 ms, recording the slowest answer (the stall a client
 * sees). Afterwards the event loop's worst delay as the server measured it (prom-client's
 * monitorEventLoopDelay, reset at each scrape; one scrape before, one after).
 */
async function underLoad(server, until) {
  await scrape(server)
  let worst = 0
  let n = 0
  let done = false
  until.finally(() => {
    done = true
  })
  while (!done) {
    const started = performance.now()
    const res = await fetch(`${server.url}${probePath}`)
    await res.arrayBuffer()
    worst = Math.max(worst, performance.now() - started)
    n++
    await sleep(20)
  }
  await until
  const lag = metric(await scrape(server), 'pullcache_nodejs_eventloop_lag_max_seconds')
  return { max_request_ms: round(worst), requests: n, max_event_loop_delay_ms: round(lag * 1000) }
}

async function scrape(server) {
  const res = await fetch(`${server.url}/metrics`)
  return res.text()
}

function metric(text, name) {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? Number.NaN : Number(line.split(' ')[1])
}

function rssMb(pid) {
  const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
  return round(kb / 1024)
}

async function latency(server, path, n = 20) {
  const times = []
  for (let i = 0; i < n; i++) {
    const started = performance.now()
    const res = await fetch(`${server.url}${path}`)
    await res.arrayBuffer()
    if (res.status !== 200) throw new Error(`${path}: ${res.status}`)
    times.push(performance.now() - started)
  }
  times.sort((a, b) => a - b)
  return { median_ms: round(times[Math.floor(n / 2)]), max_ms: round(times.at(-1)) }
}

// 0. The floor: pullcache on an empty store (loading node and its modules), on this machine now.
{
  const empty = join(work, 'empty')
  const s = await startPullcache({}, empty)
  figures.empty_store_start = { listening_ms: round(s.events.get('listening').at) }
  say('empty store start:', figures.empty_store_start)
  await s.stop()
}

// 1. First start on the built store: no clean mark, reconciliation in the background.
{
  const s = await startPullcache()
  const hit = await firstHit(s)
  const load = await underLoad(s, s.event('store.reconciled'))
  const rec = s.events.get('store.reconciled')
  await sleep(2000)
  figures.first_start = {
    listening_ms: round(s.events.get('listening').at),
    first_hit_ms: round(hit),
    reconciled_ms: round(rec.at),
    reconcile_measured_rows: rec.measured_rows,
    ...load,
    rss_after_mb: rssMb(s.pid),
  }
  say('first start (no clean mark):', figures.first_start)
  await s.stop()
}

// 2. Clean restart: the index is trusted. RSS at rest, stats, status page, /metrics.
{
  const s = await startPullcache()
  const hit = await firstHit(s)
  await sleep(3000)
  const rss = rssMb(s.pid)
  const stats = await latency(s, '/_pullcache/stats')
  const page = await latency(s, '/')
  const metrics = await latency(s, '/metrics')
  // The noise floor of the stall figures: the same probe for 10 s with nothing running.
  const idle = await underLoad(s, sleep(10_000))
  const store = (await (await fetch(`${s.url}/_pullcache/stats`)).json()).store
  figures.clean_restart = {
    listening_ms: round(s.events.get('listening').at),
    first_hit_ms: round(hit),
    rss_at_rest_mb: rss,
    stats,
    status_page: page,
    metrics,
    idle_10s: idle,
    store,
  }
  say('clean restart:', figures.clean_restart)
  // 3. kill -9 while serving, then restart: reconciliation again, in the background.
  await s.kill9()
}
{
  const s = await startPullcache()
  const hit = await firstHit(s)
  const load = await underLoad(s, s.event('store.reconciled'))
  await sleep(2000)
  figures.after_kill9 = {
    listening_ms: round(s.events.get('listening').at),
    first_hit_ms: round(hit),
    reconciled_ms: round(s.events.get('store.reconciled').at),
    ...load,
    rss_after_mb: rssMb(s.pid),
  }
  say('restart after kill -9:', figures.after_kill9)
  await s.stop()
}

// 4. Eviction of 10%: a budget that puts the store just over its high-water mark (0.9), to be
// brought down to its low-water mark (0.85), i.e. to 90% of what it holds.
{
  const total = BLOBS * figures.allocated_per_blob
  const config = join(work, 'evict.json')
  writeFileSync(
    config,
    JSON.stringify({
      cache: { max_size: String(Math.floor((total * 0.9) / 0.85)), high_water: 0.9, low_water: 0.85 },
    }),
  )
  const s = await startPullcache({ PULLCACHE_CONFIG: config })
  const load = await underLoad(s, s.event('store.evicted'))
  const ev = s.events.get('store.evicted')
  figures.evict_10_percent = {
    evicted_blobs: ev.blobs,
    evicted_bytes: ev.bytes,
    done_after_start_ms: round(ev.at),
    ...load,
  }
  say('eviction of 10%:', figures.evict_10_percent)
  await s.stop()
}

// --- distribution ----------------------------------------------------------------------------

if (!values['no-distribution']) {
  // distribution's proxy mode pings its remote at start and panics when nothing answers: a stub
  // that answers /v2/ with 200 and everything else with 404 (the probe blob is served locally).
  const stub = createServer((req, res) => {
    res.writeHead(req.url === '/v2/' ? 200 : 404, { 'content-type': 'application/json' }).end('{}')
  })
  await new Promise((r) => stub.listen(0, '127.0.0.1', r))
  const remote = `http://127.0.0.1:${stub.address().port}`
  const port = await freePort()
  const config = join(work, 'distribution.yml')
  writeFileSync(
    config,
    [
      'version: 0.1',
      'log: {level: error}',
      'storage:',
      `  filesystem: {rootdirectory: ${distRoot}}`,
      '  cache: {blobdescriptor: inmemory}',
      `http: {addr: "127.0.0.1:${port}"}`,
      `proxy: {remoteurl: "${remote}"}`,
      '',
    ].join('\n'),
  )
  const spawned = performance.now()
  let listening
  let hit
  const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] })
  children.add(child)
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (s) => {
    if (stderr.length < 8192) stderr += s
  })
  child.once('exit', (code) => {
    if (hit === undefined) console.error(`docker-registry exited (${code}) before a hit:\n${stderr}`)
  })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; i < 20_000 && hit === undefined && child.exitCode === null; i++) {
    try {
      if (listening === undefined) {
        const res = await fetch(`${url}/v2/`)
        await res.arrayBuffer()
        if (res.status === 200) listening = performance.now() - spawned
      } else {
        const res = await fetch(`${url}${probePath}`)
        const body = Buffer.from(await res.arrayBuffer())
        if (res.status === 200 && body.length === 8) hit = performance.now() - spawned
      }
    } catch {}
    if (hit === undefined) await sleep(5)
  }
  figures.distribution = {
    listening_ms: round(listening),
    first_hit_ms: round(hit),
    rss_mb: child.exitCode === null ? rssMb(child.pid) : null,
  }
  say('distribution (proxy mode):', figures.distribution)
  child.kill('SIGTERM')
  if (child.exitCode === null) await new Promise((r) => child.once('exit', r))
  children.delete(child)
  stub.closeAllConnections()
  stub.close()
}

if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`)
say('removing the stores...')
cleanup()

function secs(since) {
  return Math.round((performance.now() - since) / 100) / 10
}
function round(x) {
  return x === undefined ? null : Math.round(x * 10) / 10
}
