// How long eviction and background reconciliation hold the event loop, in-process, on a store of
// small blobs: the longest single index transaction (the synchronous step a request may wait
// behind), the longest gap a 1 ms timer saw and monitorEventLoopDelay's maximum and p99, with the
// same gap figure over 2 s of idling first (the machine's noise floor at that moment).
//
//   npm run build && node bench/store-stalls.mjs [--blobs N] [--pass evict|reconcile]
//       [--unmeasured] [--auto-checkpoint]
//
// evict: a budget puts the store just over its high-water mark (0.9) and the run brings it to
// the low-water mark (0.85), i.e. removes 10% of the blobs, each with a repo_links row.
// reconcile: the pass a start after a crash runs; --unmeasured leaves the rows' bytes on disk
// unset, so that the pass writes one row per file (a store upgraded from schema 1).
// By default WAL checkpoints run in the server's checkpointer thread; --auto-checkpoint leaves
// them to SQLite inside the commits, as before. The store is built under $TMPDIR and removed.
import { createHash } from 'node:crypto'
import { mkdirSync, mkdtempSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { removeTree } from './lib/procs.mjs'

const { values } = parseArgs({
  options: {
    blobs: { type: 'string', default: '50000' },
    pass: { type: 'string', default: 'evict' },
    unmeasured: { type: 'boolean' },
    'auto-checkpoint': { type: 'boolean' },
  },
})
const N = Number(values.blobs)
const DIST = new URL('../dist/', import.meta.url)
const { IndexDb } = await import(new URL('store/index-db.js', DIST).href)
const { BlobStore } = await import(new URL('store/blob-store.js', DIST).href)
const { Evictor } = await import(new URL('store/eviction.js', DIST).href)
const { reconcileStore } = await import(new URL('store/reconcile.js', DIST).href)
const { Store } = await import(new URL('store/store.js', DIST).href)

const work = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'pullcache-stalls-'))
process.on('exit', () => removeTree(work))
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => process.exit(130))

const blobBytes = (i) => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(i) ^ 0x5eed_0000_0000_0000n)
  return b
}
const hexOf = (i) => createHash('sha256').update(blobBytes(i)).digest('hex')
const blobDir = join(work, 'blobs', 'sha256')
for (let p = 0; p < 256; p++) mkdirSync(join(blobDir, p.toString(16).padStart(2, '0')), { recursive: true })
let index = new IndexDb(join(work, 'index.db'))
{
  const insert = index.database.prepare(
    'INSERT INTO blobs (digest, size, allocated, first_cached, last_access) VALUES (?, ?, ?, ?, ?)',
  )
  const link = index.database.prepare(
    "INSERT INTO repo_links (registry, repo, digest, kind) VALUES ('registry-1.docker.io', ?, ?, 'blob')",
  )
  const base = Date.now() - N
  let allocated
  for (let start = 0; start < N; start += 10_000) {
    const rows = []
    for (let i = start; i < Math.min(N, start + 10_000); i++) {
      const hex = hexOf(i)
      const path = join(blobDir, hex.slice(0, 2), hex)
      writeFileSync(path, blobBytes(i))
      allocated ??= statSync(path).blocks * 512
      rows.push([`sha256:${hex}`, 8, values.unmeasured ? null : allocated, base + i, base + i])
    }
    index.database.transaction(() => {
      for (const r of rows) {
        insert.run(...r)
        link.run(`team${r[3] % 500}/app`, r[0])
      }
    })()
  }
  index.close()
}

index = new IndexDb(join(work, 'index.db'))
const blobs = new BlobStore(work)
await blobs.open()
const store = new Store(blobs, index)
if (!values['auto-checkpoint']) {
  index.checkpointInBackground(200, (m) => console.error('checkpointer failed:', m))
}
// Every transaction the pass runs, timed.
const db = index.database
const transaction = db.transaction.bind(db)
let longestTx = 0
db.transaction = (fn) => {
  const tx = transaction(fn)
  return (...args) => {
    const started = performance.now()
    try {
      return tx(...args)
    } finally {
      longestTx = Math.max(longestTx, performance.now() - started)
    }
  }
}
let longestGap = 0
let gapsOver50 = 0
let last = performance.now()
const ticker = setInterval(() => {
  const now = performance.now()
  longestGap = Math.max(longestGap, now - last)
  if (now - last > 50) gapsOver50++
  last = now
}, 1)
const delay = monitorEventLoopDelay({ resolution: 1 })
delay.enable()
await new Promise((r) => setTimeout(r, 2000))
const idle = { longest_gap_ms: round(longestGap), event_loop_delay_max_ms: round(delay.max / 1e6) }
longestGap = 0
gapsOver50 = 0
delay.reset()
last = performance.now()
const started = performance.now()
const log = { debug() {}, info() {}, warn() {}, error: (e, f) => console.error(e, f) }
let outcome
if (values.pass === 'evict') {
  const total = index.storeTotals().allocated
  const evictor = new Evictor({
    store,
    log,
    policy: {
      maxSize: Math.floor((total * 0.9) / 0.85),
      highWater: 0.9,
      lowWater: 0.85,
      maxUnusedAgeMs: null,
      pins: [],
    },
  })
  const r = await evictor.run()
  outcome = { evicted: r.blobs, errors: r.errors }
} else {
  const r = await reconcileStore(store)
  outcome = { files: r.files, measured_rows: r.measured_rows }
}
const figures = {
  blobs: N,
  pass: values.pass,
  checkpoints: values['auto-checkpoint'] ? 'automatic' : 'thread',
  ...outcome,
  duration_ms: Math.round(performance.now() - started),
  longest_transaction_ms: round(longestTx),
  longest_gap_ms: round(longestGap),
  gaps_over_50ms: gapsOver50,
  event_loop_delay_max_ms: round(delay.max / 1e6),
  event_loop_delay_p99_ms: round(delay.percentile(99) / 1e6),
  idle_before: idle,
}
clearInterval(ticker)
await index.stopCheckpoints()
index.close()
console.log(JSON.stringify(figures))

function round(x) {
  return Math.round(x * 10) / 10
}
