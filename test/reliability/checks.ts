// The reliability checks: each starts its own fake Docker Hub (test/support/fake-upstream.ts) and
// one server under test (servers.ts) on a fresh store, does one thing that goes wrong in
// production, and says pass or fail against a criterion written next to it, plus figures.
// The same functions run at two sizes: BOUNDED in the test suite, FULL from bench/reliability.
import { randomBytes } from 'node:crypto'
import { statfsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, unlink, writeFile } from 'node:fs/promises'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import bcrypt from 'bcryptjs'
import fc from 'fast-check'
import { run } from '../e2e/processes.js'
import { type FakeUpstream, type Fault, startFakeUpstream } from '../support/fake-upstream.js'
import { runCli } from '../support/run-cli.js'
import { fdsOf, isOciErrorBody, mib, type Pull, pullBlob, rawRequest, rssOf } from './client.js'
import { type ServerKind, type ServerOptions, type ServerUnderTest, startServer } from './servers.js'

export interface Sizes {
  killRounds: number
  killBlobs: number
  killBlobBytes: number
  faultBlobBytes: number
  diskBlobBytes: number
  slowClients: number
  idleClients: number
  bigBlobBytes: number
  holdMs: number
  fuzzRuns: number
}

const MiB = 1024 * 1024

export const BOUNDED: Sizes = {
  killRounds: 2,
  killBlobs: 3,
  killBlobBytes: 4 * MiB,
  faultBlobBytes: 1 * MiB,
  diskBlobBytes: 12 * MiB,
  slowClients: 50,
  idleClients: 50,
  bigBlobBytes: 32 * MiB,
  holdMs: 8_000,
  fuzzRuns: 300,
}

export const FULL: Sizes = {
  killRounds: 10,
  killBlobs: 4,
  killBlobBytes: 16 * MiB,
  faultBlobBytes: 8 * MiB,
  diskBlobBytes: 16 * MiB,
  slowClients: 200,
  idleClients: 200,
  bigBlobBytes: 128 * MiB,
  holdMs: 75_000,
  fuzzRuns: 3000,
}

export interface CheckResult {
  check: string
  server: ServerKind
  /** null: could not be run here (say why in `failures`). */
  pass: boolean | null
  failures: string[]
  figures: Record<string, string | number>
}

export interface Check {
  id: string
  title: string
  run(kind: ServerKind, sizes: Sizes): Promise<CheckResult>
}

/** Runs `body` with a fake upstream and a temp dir, both gone afterwards, however it ends. */
async function withSetup(
  id: string,
  kind: ServerKind,
  upOpts: Parameters<typeof startFakeUpstream>[0],
  body: (ctx: {
    up: FakeUpstream
    root: string
    r: CheckResult
    started: ServerUnderTest[]
  }) => Promise<void>,
): Promise<CheckResult> {
  const r: CheckResult = { check: id, server: kind, pass: null, failures: [], figures: {} }
  const up = await startFakeUpstream(upOpts)
  const root = await mkdtemp(join(tmpdir(), `pcrel-${id}-`))
  const started: ServerUnderTest[] = []
  try {
    await body({ up, root, r, started })
    if (r.pass === null && !r.figures.skipped) r.pass = r.failures.length === 0
  } finally {
    for (const s of started) await s.stop()
    await up.close()
    await rm(root, { recursive: true, force: true, maxRetries: 3 })
  }
  return r
}

async function serve(
  kind: ServerKind,
  started: ServerUnderTest[],
  opts: ServerOptions,
): Promise<ServerUnderTest> {
  const s = await startServer(kind, opts)
  started.push(s)
  return s
}

const blobPath = (repo: string, digest: string) => `/v2/${repo}/blobs/${digest}`

function addBlobs(
  up: FakeUpstream,
  repo: string,
  n: number,
  bytes: number,
): { digest: string; path: string }[] {
  return Array.from({ length: n }, () => {
    const digest = up.addBlob(repo, randomBytes(bytes))
    return { digest, path: blobPath(repo, digest) }
  })
}

/** pullcache: `pullcache verify` on the store exits 0. distribution has no such tool. */
async function verifyStore(server: ServerUnderTest, r: CheckResult, when: string): Promise<void> {
  if (server.kind !== 'pullcache') return
  const res = await runCli(['verify', '--data-dir', server.dataDir], { timeoutMs: 120_000 })
  if (res.code !== 0)
    r.failures.push(
      `${when}: pullcache verify exited ${res.code}: ${(res.stdout + res.stderr).slice(0, 300)}`,
    )
}

/** The server process is alive and GET /v2/ answers within `ms`. */
async function answers(server: ServerUnderTest, ms = 2_000): Promise<number | undefined> {
  if (!server.isRunning()) return undefined
  const t0 = performance.now()
  try {
    const res = await fetch(`${server.url}/v2/`, { signal: AbortSignal.timeout(ms) })
    await res.arrayBuffer()
    return res.status === 200 || res.status === 401 ? Math.round(performance.now() - t0) : undefined
  } catch {
    return undefined
  }
}

const tally = (pulls: Pull[]) => {
  const out: Record<string, number> = {}
  for (const p of pulls) out[p.outcome] = (out[p.outcome] ?? 0) + 1
  return Object.entries(out)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')
}

// ---- kill -9 during cold pulls ------------------------------------------------------------------

// Criterion: no client ever gets a clean wrong response; the restarted server answers GET /v2/
// within 2 s of being started (or 1.5 times its first start, if that was slower: see below); pullcache verify exits 0; every blob re-pulled after the restart
// comes back whole and right (for distribution this is the only store check there is).
const killDuringPulls: Check = {
  id: 'kill9',
  title: 'kill -9 during 20 concurrent cold pulls, restart',
  run: (kind, sizes) =>
    withSetup('kill9', kind, {}, async ({ up, root, r, started }) => {
      const server = await serve(kind, started, { upstream: up.url, dataDir: join(root, 'data') })
      // 2 s; on a machine so loaded that even the first start on an empty store takes longer,
      // 1.5 times that: what is measured is the cost of recovering from the kill, not of Node
      // loading its modules.
      const restartLimit = Math.max(2_000, Math.round(1.5 * server.firstStartMs))
      const restarts: number[] = []
      const all: Pull[] = []
      for (let round = 0; round < sizes.killRounds; round++) {
        const repo = `rel/kill${round}`
        const blobs = addBlobs(up, repo, sizes.killBlobs, sizes.killBlobBytes)
        // About 1.6 MB/s per download, so the kill always lands mid-transfer.
        up.fault(
          { host: 'cdn', method: 'GET', path: /^\/blobs\// },
          { kind: 'slow', chunkBytes: 32 * 1024, delayMs: 20 },
        )
        const pulls = Array.from({ length: 20 }, (_, i) => {
          const b = blobs[i % blobs.length]!
          return pullBlob(server.url, b.path, b.digest, { deadlineMs: 60_000 })
        })
        // The kill moment moves through 0.3 to 1.5 s over the rounds, the same on every run.
        await sleep(300 + ((round * 397) % 1200))
        await server.kill9()
        const got = await Promise.all(pulls)
        all.push(...got)
        for (const p of got)
          if (p.outcome === 'wrong') r.failures.push(`round ${round}: a client got ${p.detail}`)
        up.clearFaults()
        let ms: number
        try {
          ms = await server.start(20_000)
        } catch (err) {
          r.failures.push(`round ${round}: restart failed: ${(err as Error).message.slice(0, 400)}`)
          break
        }
        restarts.push(Math.round(ms))
        if (ms > restartLimit) {
          r.failures.push(`round ${round}: restart took ${Math.round(ms)} ms (limit ${restartLimit} ms)`)
        }
        await verifyStore(server, r, `round ${round}`)
        for (const b of blobs) {
          const p = await pullBlob(server.url, b.path, b.digest, { deadlineMs: 30_000 })
          if (p.outcome !== 'ok')
            r.failures.push(`round ${round}: re-pull after restart: ${p.outcome} ${p.detail}`)
        }
      }
      r.figures.rounds = sizes.killRounds
      r.figures['clients at the kill'] = tally(all)
      r.figures['restart ms (max)'] = restarts.length ? Math.max(...restarts) : '-'
      r.figures['first start ms (empty store)'] = server.firstStartMs
      r.figures['restart limit ms'] = restartLimit
    }),
}

// ---- upstream faults --------------------------------------------------------------------------

interface FaultCase {
  name: string
  arm(up: FakeUpstream, registryPath: string, digest: string, blobBytes: number): void
}

const at = (up: FakeUpstream, host: 'registry' | 'cdn' | 'auth', path: string, fault: Fault) =>
  up.fault({ host, method: 'GET', path }, fault)

export const FAULTS: FaultCase[] = [
  { name: 'connection reset', arm: (up, p) => at(up, 'registry', p, { kind: 'reset' }) },
  {
    name: 'truncated body',
    arm: (up, _, d, n) => at(up, 'cdn', `/blobs/${d}`, { kind: 'cut', afterBytes: n >> 1 }),
  },
  { name: 'corrupted body', arm: (up, _, d) => at(up, 'cdn', `/blobs/${d}`, { kind: 'corrupt' }) },
  { name: '503', arm: (up, p) => at(up, 'registry', p, { kind: 'status', status: 503 }) },
  {
    name: '429 Retry-After',
    arm: (up, p) => at(up, 'registry', p, { kind: 'status', status: 429, headers: { 'Retry-After': '1' } }),
  },
  { name: 'token service down', arm: (up) => at(up, 'auth', '/token', { kind: 'status', status: 503 }) },
  { name: 'slow headers (3 s)', arm: (up, p) => at(up, 'registry', p, { kind: 'delay', ms: 3_000 }) },
  { name: 'hang', arm: (up, p) => at(up, 'registry', p, { kind: 'hang' }) },
  {
    name: 'stall mid-body',
    arm: (up, _, d, n) => at(up, 'cdn', `/blobs/${d}`, { kind: 'stall', afterBytes: n >> 1 }),
  },
  {
    name: 'zero-length body',
    arm: (up, _, d) => at(up, 'cdn', `/blobs/${d}`, { kind: 'status', status: 200, body: '' }),
  },
  {
    name: 'slow body',
    arm: (up, _, d) => at(up, 'cdn', `/blobs/${d}`, { kind: 'slow', chunkBytes: 64 * 1024, delayMs: 50 }),
  },
  {
    name: 'CDN redirect fails',
    arm: (up, _, d) => at(up, 'cdn', `/blobs/${d}`, { kind: 'status', status: 502 }),
  },
]

// Criterion, for each fault (armed until cleared): the client gets the right bytes or an error
// (an OCI error body, or a cut connection) within 30 s, never a clean wrong or short 200, never
// silence; once the fault is cleared, the very next pull of the same blob is right (within 15 s);
// afterwards pullcache verify exits 0.
const upstreamFaults: Check = {
  id: 'faults',
  title: 'upstream faults (12)',
  run: (kind, sizes) =>
    withSetup('faults', kind, {}, async ({ up, root, r, started }) => {
      const server = await serve(kind, started, { upstream: up.url, dataDir: join(root, 'data') })
      let passed = 0
      for (const [i, f] of FAULTS.entries()) {
        // A repository of its own: no token, manifest or blob of an earlier case helps.
        const repo = `rel/fault${i}`
        const [b] = addBlobs(up, repo, 1, sizes.faultBlobBytes)
        f.arm(up, b!.path, b!.digest, sizes.faultBlobBytes)
        const during = await pullBlob(server.url, b!.path, b!.digest, { deadlineMs: 30_000 })
        up.clearFaults()
        // A moment for the failed fill to be wound up; the next pull is then a first try.
        await sleep(250)
        const after = await pullBlob(server.url, b!.path, b!.digest, { deadlineMs: 15_000 })
        const ok = (during.outcome === 'ok' || during.outcome === 'error') && after.outcome === 'ok'
        r.figures[f.name] =
          `${during.outcome}${during.status ? ` ${during.status}` : ''} in ${during.ms} ms, then ${after.outcome}${
            after.outcome === 'ok' ? ` in ${after.ms} ms` : ''
          }`
        if (ok) passed++
        else
          r.failures.push(
            `${f.name}: during ${during.outcome} (${during.detail.slice(0, 160)}), after ${after.outcome} (${after.detail.slice(0, 120)})`,
          )
        if (!server.isRunning()) {
          r.failures.push(`${f.name}: the server died`)
          return
        }
      }
      await verifyStore(server, r, 'after the faults')
      r.figures.passed = `${passed}/${FAULTS.length}`
    }),
}

// ---- disk full --------------------------------------------------------------------------------

// Criterion: with less free space than the blob, the client gets the right bytes or a clean error;
// the server stays up (GET /v2/ within 2 s); pullcache verify exits 0 (nothing partial committed);
// once space is freed, the next two pulls are right.
const diskFull: Check = {
  id: 'disk-full',
  title: 'disk full (32 MiB tmpfs)',
  run: (kind, sizes) =>
    withSetup('disk-full', kind, {}, async ({ up, root, r, started }) => {
      const mnt = join(root, 'mnt')
      await mkdir(mnt)
      const mounted = await run('mount', ['-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', mnt], {
        allowFailure: true,
      })
      if (mounted.code !== 0) {
        r.figures.skipped = 'mount refused'
        r.failures.push(
          `not run: mount -t tmpfs refused (${mounted.stderr.trim()}); needs root or CAP_SYS_ADMIN`,
        )
        return
      }
      try {
        const server = await serve(kind, started, { upstream: up.url, dataDir: join(mnt, 'data') })
        const ballast = join(mnt, 'ballast')
        const free = () => {
          const s = statfsSync(mnt)
          return s.bavail * s.bsize
        }
        // Leave 4 MiB: less than the blob, more than the server needs to keep running.
        await writeFile(ballast, Buffer.alloc(Math.max(0, free() - 4 * MiB)))
        r.figures['free before'] = mib(free())
        const [b] = addBlobs(up, 'rel/disk', 1, sizes.diskBlobBytes)
        const full = await pullBlob(server.url, b!.path, b!.digest, { deadlineMs: 30_000 })
        r.figures['pull on a full disk'] = `${full.outcome}${full.status ? ` ${full.status}` : ''}`
        if (full.outcome !== 'ok' && full.outcome !== 'error')
          r.failures.push(`full disk: ${full.outcome} ${full.detail}`)
        r.figures['free after'] = mib(free())
        const alive = await answers(server)
        if (alive === undefined)
          r.failures.push('the server did not answer GET /v2/ within 2 s after the full disk')
        await verifyStore(server, r, 'after the full disk')
        await unlink(ballast)
        for (const n of [1, 2]) {
          const p = await pullBlob(server.url, b!.path, b!.digest, { deadlineMs: 30_000 })
          if (p.outcome !== 'ok') r.failures.push(`pull ${n} after freeing space: ${p.outcome} ${p.detail}`)
        }
        await verifyStore(server, r, 'after freeing space')
      } finally {
        for (const s of started.splice(0)) await s.stop()
        await run('umount', [mnt], { allowFailure: true })
      }
    }),
}

// ---- slow and idle clients --------------------------------------------------------------------

// Criterion: with N slow readers of a cached big blob and N connections that never send a byte,
// the server stays up and answers GET /v2/ within 5 s; its resident memory grows by less than
// 512 MiB; within 20 s of the clients leaving its open descriptors are back to the baseline (+2).
// How many connections the server's own deadlines closed is a figure, not a criterion.
const slowIdleClients: Check = {
  id: 'slow-idle',
  title: 'slow and idle clients',
  run: (kind, sizes) =>
    withSetup('slow-idle', kind, {}, async ({ up, root, r, started }) => {
      const server = await serve(kind, started, { upstream: up.url, dataDir: join(root, 'data') })
      const [b] = addBlobs(up, 'rel/big', 1, sizes.bigBlobBytes)
      const warm = await pullBlob(server.url, b!.path, b!.digest, { deadlineMs: 120_000 })
      if (warm.outcome !== 'ok') {
        r.failures.push(`could not cache the blob: ${warm.outcome} ${warm.detail}`)
        return
      }
      // A second, cached pull: the baseline is taken with whatever the server keeps warm.
      await pullBlob(server.url, b!.path, b!.digest, { deadlineMs: 120_000 })
      const pid = server.pid!
      await sleep(500)
      const baseFds = fdsOf(pid)
      const baseRss = rssOf(pid)
      const { port } = new URL(server.url)
      const sockets: Socket[] = []
      const timers = new Set<NodeJS.Timeout>()
      let leaving = false
      let closedByServer = { slow: 0, idle: 0 }
      let slowBytes = 0
      const open = (slow: boolean) => {
        const s = connect({ host: '127.0.0.1', port: Number(port) })
        sockets.push(s)
        s.on('error', () => {})
        s.on('close', () => {
          if (!leaving)
            closedByServer = {
              ...closedByServer,
              [slow ? 'slow' : 'idle']: closedByServer[slow ? 'slow' : 'idle'] + 1,
            }
        })
        // An idle client reads (it just never sends), so a close by the server is seen.
        if (!slow) {
          s.resume()
          return
        }
        s.on('connect', () => s.write(`GET ${b!.path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`))
        // One socket read (at most 64 KiB) a second: a reader on a very slow link.
        s.on('data', (d: Buffer) => {
          slowBytes += d.length
          s.pause()
          const t = setTimeout(() => {
            timers.delete(t)
            if (!s.destroyed) s.resume()
          }, 1_000)
          timers.add(t)
        })
      }
      try {
        for (let i = 0; i < sizes.slowClients; i++) open(true)
        for (let i = 0; i < sizes.idleClients; i++) open(false)
        let peakFds = baseFds
        let peakRss = baseRss
        let probeMs: number | undefined
        const end = performance.now() + sizes.holdMs
        let probed = false
        while (performance.now() < end) {
          peakFds = Math.max(peakFds, fdsOf(pid))
          peakRss = Math.max(peakRss, rssOf(pid))
          if (!probed && performance.now() > end - sizes.holdMs / 2) {
            probed = true
            probeMs = await answers(server, 5_000)
          }
          await sleep(250)
        }
        r.figures['baseline fds'] = baseFds
        r.figures['peak fds'] = peakFds
        r.figures['baseline RSS'] = mib(baseRss)
        r.figures['peak RSS'] = mib(peakRss)
        r.figures['GET /v2/ under load'] = probeMs === undefined ? 'no answer' : `${probeMs} ms`
        r.figures['closed by the server (slow/idle)'] =
          `${closedByServer.slow}/${closedByServer.idle} in ${sizes.holdMs / 1000} s`
        r.figures['read by slow clients'] = mib(slowBytes)
        if (!server.isRunning()) r.failures.push('the server died')
        if (probeMs === undefined) r.failures.push('GET /v2/ got no answer within 5 s under load')
        if (peakRss - baseRss > 512 * MiB) r.failures.push(`RSS grew by ${mib(peakRss - baseRss)}`)
      } finally {
        leaving = true
        for (const t of timers) clearTimeout(t)
        for (const s of sockets) s.destroy()
      }
      let after = fdsOf(pid)
      const t0 = performance.now()
      while (after > baseFds + 2 && performance.now() - t0 < 20_000) {
        await sleep(250)
        after = fdsOf(pid)
      }
      r.figures['fds after they left'] = `${after} (${Math.round((performance.now() - t0) / 100) / 10} s)`
      if (after > baseFds + 2)
        r.failures.push(`open fds ${after} 20 s after the clients left (baseline ${baseFds})`)
    }),
}

// ---- fuzzer -----------------------------------------------------------------------------------

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'PROPFIND']
const SEGMENTS = [
  'library',
  'busybox',
  '..',
  '.',
  '%2e%2e',
  '%2F',
  '%00',
  'UPPER',
  '_x',
  'a-',
  'é',
  '%',
  '',
  '*',
]

function fuzzRequests(runs: number, seed: number, host: string): string[] {
  const segment = fc.oneof(
    fc.stringMatching(/^[a-z0-9]{1,12}$/),
    fc.constantFrom(...SEGMENTS),
    fc.string({ maxLength: 12 }),
  )
  const reference = fc.oneof(
    fc.stringMatching(/^[0-9a-f]{0,70}$/).map((h) => `sha256:${h}`),
    fc.stringMatching(/^[A-Za-z0-9_.:+-]{0,140}$/),
    fc.constantFrom('latest', 'sha256:', 'sha512:abc', `sha256:${'a'.repeat(64)}`, '..', '%2e'),
    fc.string({ maxLength: 20 }),
  )
  const v2 = fc
    .tuple(
      fc.array(segment, { minLength: 0, maxLength: 4 }),
      fc.constantFrom('manifests', 'blobs', 'tags', 'blobs/uploads', 'referrers'),
      reference,
      fc.integer({ min: 0, max: 300 }),
    )
    .map(
      ([segs, kind, ref, pad]) =>
        `/v2/${[...segs, 'x'.repeat(pad % 260 === 0 ? 0 : pad)].filter(Boolean).join('/')}/${kind}/${ref}`,
    )
  const path = fc.oneof(
    v2,
    fc.constantFrom(
      '/',
      '/v2',
      '/v2/',
      '/v2/_catalog',
      '/_pullcache/stats',
      '/_pullcache/nothing',
      '/metrics',
      '*',
      '/v2/../../etc/passwd',
      '//v2//library//x/manifests/latest',
      '/v2/library/x/tags/list?n=-1&last=%ff',
    ),
    fc.webPath(),
  )
  const header = fc.oneof(
    fc
      .constantFrom(
        'bytes=0-10',
        'bytes=-5',
        'bytes=10-5',
        'bytes=abc',
        'bytes=0-1,5-9',
        'bytes=99999999999999999999-',
      )
      .map((v) => `Range: ${v}`),
    fc.string({ maxLength: 40 }).map((v) => `Accept: ${v}`),
    fc
      .constantFrom(
        'Basic !!!',
        'Bearer ',
        'Basic Og==',
        `Basic ${Buffer.from('a:b').toString('base64')}`,
        'Negotiate x',
      )
      .map((v) => `Authorization: ${v}`),
    fc.string({ maxLength: 30 }).map((v) => `If-None-Match: ${v}`),
    fc.integer({ min: 0, max: 20_000 }).map((n) => `X-Big: ${'a'.repeat(n)}`),
    fc.string({ maxLength: 20 }).map((v) => `X-${v}: ${v}`),
  )
  const requestArb = fc.record({
    // Mostly requests the HTTP parser accepts, so most reach the routes; some it must refuse.
    method: fc.oneof(
      { arbitrary: fc.constantFrom(...METHODS), weight: 8 },
      { arbitrary: fc.stringMatching(/^[A-Za-z]{1,12}$/), weight: 1 },
    ),
    path,
    version: fc.oneof(
      { arbitrary: fc.constant('HTTP/1.1'), weight: 8 },
      { arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/9.9', 'HTTP/1.1 x'), weight: 1 },
    ),
    withHost: fc.boolean(),
    headers: fc.array(header, { maxLength: 4 }),
  })
  return fc
    .sample(requestArb, { numRuns: runs, seed })
    .map(({ method, path, version, withHost, headers }) => {
      const lines = [`${method} ${path} ${version}`]
      if (withHost || version === 'HTTP/1.1') lines.push(`Host: ${host}`)
      lines.push(...headers, 'Connection: close', '', '')
      return lines.join('\r\n')
    })
}

// Criterion: over the generated requests (sent 8 at a time), 0 crashes (the process is alive and
// answers at the end), 0 responses with a 5xx status, every 4xx answer to a non-HEAD request has
// an OCI error body, and no request goes unanswered for 10 s. A connection closed without an
// answer is counted, not failed.
const fuzz: Check = {
  id: 'fuzz',
  title: 'fuzzer (random and malformed requests)',
  run: (kind, sizes) =>
    withSetup('fuzz', kind, {}, async ({ up, root, r, started }) => {
      up.addImage('library/busybox', 'latest')
      const server = await serve(kind, started, { upstream: up.url, dataDir: join(root, 'data') })
      const seed = Number(process.env.PULLCACHE_FUZZ_SEED ?? 20261201)
      const host = new URL(server.url).host
      const requests = fuzzRequests(sizes.fuzzRuns, seed, host)
      const counts = { '2xx/3xx': 0, '4xx': 0, '5xx': 0, 'no answer': 0, hung: 0, '4xx without OCI body': 0 }
      const samples: string[] = []
      const note = (what: string, req: string, detail: string) => {
        if (samples.length < 6)
          samples.push(`${what}: ${JSON.stringify(req.slice(0, 120))} -> ${detail.slice(0, 120)}`)
      }
      let next = 0
      const worker = async () => {
        while (next < requests.length) {
          const req = requests[next++]!
          const res = await rawRequest(server.url, Buffer.from(req, 'utf8'), 10_000)
          if (res.timedOut && res.status === undefined) {
            counts.hung++
            note('hung', req, '')
          } else if (res.status === undefined) counts['no answer']++
          else if (res.status >= 500) {
            counts['5xx']++
            note(`${res.status}`, req, res.body.toString('utf8'))
          } else if (res.status >= 400) {
            counts['4xx']++
            const head = req.startsWith('HEAD ')
            if (!head && !isOciErrorBody(res.body.toString('utf8'))) {
              counts['4xx without OCI body']++
              note(
                `${res.status} without OCI body`,
                req,
                res.body.toString('utf8') || res.head.split('\r\n')[0]!,
              )
            }
          } else counts['2xx/3xx']++
        }
      }
      await Promise.all(Array.from({ length: 8 }, worker))
      Object.assign(r.figures, { requests: requests.length, seed }, counts)
      const alive = await answers(server, 5_000)
      if (alive === undefined)
        r.failures.push('crashed: the server does not answer GET /v2/ after the fuzzing')
      if (counts['5xx'] > 0) r.failures.push(`${counts['5xx']} responses with a 5xx status`)
      if (counts['4xx without OCI body'] > 0)
        r.failures.push(`${counts['4xx without OCI body']} 4xx responses without an OCI error body`)
      if (counts.hung > 0) r.failures.push(`${counts.hung} requests unanswered for 10 s`)
      if (r.failures.length > 0) r.failures.push(...samples.map((s) => `e.g. ${s}`))
    }),
}

// ---- open proxy and credentials ---------------------------------------------------------------

async function sentinel(): Promise<{
  url: string
  host: string
  connections: () => number
  close(): Promise<void>
}> {
  let connections = 0
  const sockets = new Set<Socket>()
  const server: Server = createServer((s) => {
    connections++
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
    s.end('HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsentinel')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    connections: () => connections,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

// Criterion: none of the probes makes the server connect to the sentinel listener (the only hosts it
// may contact are the configured upstream's registry, token service and CDN); the upstream password
// (plain, or base64 in a Basic header) appears in no response and no line the server printed; no
// request to the CDN carries an Authorization header; Basic credentials go to the token service only.
const openProxy: Check = {
  id: 'open-proxy',
  title: 'open-proxy and credential probes',
  run: (kind) =>
    withSetup(
      'open-proxy',
      kind,
      { users: { mirror: 'pw-7c1d9e3a55' } },
      async ({ up, root, r, started }) => {
        const password = 'pw-7c1d9e3a55'
        const basic = Buffer.from(`mirror:${password}`).toString('base64')
        const image = up.addImage('library/pub', 'v1', { layers: 1, layerBytes: 256 * 1024 })
        const spy = await sentinel()
        try {
          const server = await serve(kind, started, {
            upstream: up.url,
            dataDir: join(root, 'data'),
            upstreamUser: { username: 'mirror', password },
          })
          const h = new URL(server.url).host
          const probes: Record<string, string> = {
            'absolute-form GET': `GET ${spy.url}/ HTTP/1.1\r\nHost: ${spy.host}\r\nConnection: close\r\n\r\n`,
            'absolute-form /v2/ path': `GET ${spy.url}/v2/library/pub/manifests/v1 HTTP/1.1\r\nHost: ${spy.host}\r\nConnection: close\r\n\r\n`,
            CONNECT: `CONNECT ${spy.host} HTTP/1.1\r\nHost: ${spy.host}\r\n\r\n`,
            '?ns= an unlisted host': `GET /v2/library/pub/manifests/v1?ns=${spy.host} HTTP/1.1\r\nHost: ${h}\r\nConnection: close\r\n\r\n`,
            'Host: the sentinel': `GET /v2/library/pub/manifests/v1 HTTP/1.1\r\nHost: ${spy.host}\r\nConnection: close\r\n\r\n`,
            'X-Forwarded-Host': `GET /v2/library/pub/manifests/v1 HTTP/1.1\r\nHost: ${h}\r\nX-Forwarded-Host: ${spy.host}\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n`,
            'host as first name component': `GET /v2/${spy.host}/library/pub/manifests/v1 HTTP/1.1\r\nHost: ${h}\r\nConnection: close\r\n\r\n`,
            'encoded host in name': `GET /v2/${encodeURIComponent(`${spy.url}/`)}x/manifests/v1 HTTP/1.1\r\nHost: ${h}\r\nConnection: close\r\n\r\n`,
          }
          const seen: string[] = []
          for (const [name, raw] of Object.entries(probes)) {
            const before = spy.connections()
            const res = await rawRequest(server.url, raw, 10_000)
            seen.push(res.head, res.body.toString('latin1'))
            r.figures[name] = res.status === undefined ? 'closed' : String(res.status)
            if (spy.connections() > before) r.failures.push(`${name}: the server connected to the sentinel`)
          }
          // An ordinary pull with the account: the path through the token service, the registry's
          // 307 and the CDN, where the credentials must not follow.
          for (const layer of image.layers) {
            const p = await pullBlob(server.url, blobPath('library/pub', layer.digest), layer.digest)
            if (p.outcome !== 'ok') r.failures.push(`a normal pull failed: ${p.outcome} ${p.detail}`)
          }
          const m = await rawRequest(
            server.url,
            `GET /v2/library/pub/manifests/v1 HTTP/1.1\r\nHost: ${h}\r\nAccept: ${image.mediaType}\r\nConnection: close\r\n\r\n`,
          )
          seen.push(m.head, m.body.toString('latin1'))
          // A pull upstream refuses (unknown repository), so error paths get logged too.
          const missing = await rawRequest(
            server.url,
            `GET /v2/library/nope/manifests/v1 HTTP/1.1\r\nHost: ${h}\r\nConnection: close\r\n\r\n`,
          )
          seen.push(missing.head, missing.body.toString('latin1'))
          await sleep(200)
          const text = `${seen.join('\n')}\n${server.output()}`
          if (text.includes(password) || text.includes(basic))
            r.failures.push('the upstream password appears in a response or a log line')
          r.figures['sentinel connections'] = spy.connections()
          if (spy.connections() > 0 && !r.failures.some((f) => f.includes('sentinel'))) {
            r.failures.push(`${spy.connections()} connections reached the sentinel`)
          }
          if (up.cdnAuthorizationLeaks > 0)
            r.failures.push(`${up.cdnAuthorizationLeaks} CDN requests carried an Authorization header`)
          const basicElsewhere = up.requests.filter(
            (q) => q.host !== 'auth' && q.authorization?.startsWith('Basic'),
          )
          if (basicElsewhere.length > 0)
            r.failures.push(`Basic credentials sent to the ${basicElsewhere[0]!.host} host`)
          r.figures['upstream requests'] = up.requests.length
        } finally {
          await spy.close()
        }
      },
    ),
}

// ---- private repositories ---------------------------------------------------------------------

// Criterion: with an upstream account that can read acme/secret and an htpasswd file for clients,
// a client with htpasswd credentials gets the private manifest and blob (200); an anonymous client
// gets 401 for the private repository, and its blob digest under a public name is not served
// (404, or 401 from a server that refuses anonymous clients altogether); the status page, stats
// and metrics answer an anonymous viewer without naming the private repository.
const privateRepos: Check = {
  id: 'private',
  title: 'private repositories, anonymous and htpasswd clients',
  run: (kind) =>
    withSetup(
      'private',
      kind,
      { users: { mirror: 'pw-private-31' }, privateRepos: ['acme/secret'] },
      async ({ up, root, r, started }) => {
        const secret = up.addImage('acme/secret', 'v1', { layers: 1, layerBytes: 64 * 1024 })
        const pub = up.addImage('library/pub', 'v1', { layers: 1, layerBytes: 64 * 1024 })
        const htpasswd = join(root, 'htpasswd')
        // What `htpasswd -B` writes: bcrypt with the $2y$ prefix.
        await writeFile(htpasswd, `alice:${bcrypt.hashSync('alice-pw', 10).replace(/^\$2b\$/, '$2y$')}\n`)
        const server = await serve(kind, started, {
          upstream: up.url,
          dataDir: join(root, 'data'),
          upstreamUser: { username: 'mirror', password: 'pw-private-31' },
          htpasswdFile: htpasswd,
        })
        const alice = { authorization: `Basic ${Buffer.from('alice:alice-pw').toString('base64')}` }
        const accept = { accept: secret.mediaType }
        const status = async (path: string, headers: Record<string, string> = {}) => {
          const res = await fetch(`${server.url}${path}`, {
            headers: { ...accept, ...headers },
            signal: AbortSignal.timeout(15_000),
          })
          const body = await res.text()
          return { status: res.status, body }
        }
        const layer = secret.layers[0]!
        const expect = (what: string, got: number, ok: number[]) => {
          r.figures[what] = got
          if (!ok.includes(got)) r.failures.push(`${what}: ${got}, want ${ok.join(' or ')}`)
        }
        expect(
          'htpasswd client, private manifest',
          (await status('/v2/acme/secret/manifests/v1', alice)).status,
          [200],
        )
        expect(
          'htpasswd client, private blob',
          (await status(blobPath('acme/secret', layer.digest), alice)).status,
          [200],
        )
        expect('anonymous, private manifest', (await status('/v2/acme/secret/manifests/v1')).status, [401])
        expect(
          'anonymous, private manifest by digest',
          (await status(`/v2/acme/secret/manifests/${secret.manifestDigest}`)).status,
          [401],
        )
        expect('anonymous, private blob', (await status(blobPath('acme/secret', layer.digest))).status, [401])
        expect(
          'anonymous, private blob under a public name',
          (await status(blobPath('library/pub', layer.digest))).status,
          [404, 401],
        )
        expect(
          'anonymous, private manifest under a public name',
          (await status(`/v2/library/pub/manifests/${secret.manifestDigest}`)).status,
          [404, 401],
        )
        r.figures['anonymous, public manifest (figure)'] = (
          await status('/v2/library/pub/manifests/v1')
        ).status
        void pub
        for (const page of ['/', '/_pullcache/stats', '/metrics', '/_pullcache/health']) {
          const res = await status(page)
          if (res.body.includes('acme/secret')) {
            r.failures.push(`${page} names the private repository to an anonymous viewer (${res.status})`)
          }
        }
      },
    ),
}

export const CHECKS: readonly Check[] = [
  killDuringPulls,
  upstreamFaults,
  diskFull,
  slowIdleClients,
  fuzz,
  openProxy,
  privateRepos,
]
