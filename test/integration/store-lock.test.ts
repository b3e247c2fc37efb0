// One server per store: the claim is a kernel lock on <data_dir>/pullcache.lock, so a live
// server is never taken over (same process, another process, another pid namespace), and a dead
// one never blocks a start (kill -9, a zombie not yet reaped, a pid number now used by someone
// else). Servers here are the built CLI (`npm run build` first) or in-process mirrors.

import { existsSync, readFileSync } from 'node:fs'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { afterEach, describe, expect, test } from 'vitest'
import { StoreLocked } from '../../src/store/store-lock.js'
import { type Daemon, startDaemon } from '../e2e/processes.js'
import { MAIN_JS, runCli } from '../support/run-cli.js'
import { startMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

// Nothing is pulled here; the upstream is never contacted.
const UPSTREAM = 'http://127.0.0.1:1'
const PID_NAMESPACE = ['unshare', '--pid', '--fork', '--mount-proc', '--kill-child']

interface ServeProcess {
  daemon: Daemon
  /** The URL once the "listening" line is out, or how the process ended before that. */
  outcome: Promise<{ url: string } | { code: number | null }>
  lines: Record<string, unknown>[]
  stderr(): string
}

const started: ServeProcess[] = []
const dirs: string[] = []

afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.daemon.stop(5_000)))
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })))
})

async function dataDir(): Promise<string> {
  const dir = await tmpRoot()
  dirs.push(dir)
  return dir
}

/** `pullcache serve` on `dir` as a child process, optionally behind a wrapper such as unshare. */
function serve(dir: string, wrapper: string[] = []): ServeProcess {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PULLCACHE_')))
  Object.assign(env, {
    PULLCACHE_LISTEN: '127.0.0.1:0',
    PULLCACHE_DATA_DIR: dir,
    PULLCACHE_UPSTREAM: UPSTREAM,
  })
  const lines: Record<string, unknown>[] = []
  let url: string | undefined
  const command = [...wrapper, process.execPath, MAIN_JS, 'serve']
  const daemon = startDaemon(command[0]!, command.slice(1), {
    env,
    onLine: (line, stream) => {
      if (stream !== 'stdout' || !line.startsWith('{')) return
      const parsed = JSON.parse(line) as Record<string, unknown>
      lines.push(parsed)
      if (parsed.event === 'listening') url = parsed.url as string
    },
  })
  const outcome = waitFor<{ url: string } | { code: number | null }>(
    async () => {
      if (url !== undefined) return { url }
      if (!daemon.isRunning()) return { code: (await daemon.exited).code }
      return undefined
    },
    { timeoutMs: 20_000, intervalMs: 10, what: 'the "listening" line or an exit' },
  )
  const proc = { daemon, outcome, lines, stderr: () => daemon.stderr.join('\n') }
  started.push(proc)
  return proc
}

async function listening(proc: ServeProcess): Promise<string> {
  const outcome = await proc.outcome
  if (!('url' in outcome)) throw new Error(`serve exited with ${outcome.code}:\n${proc.daemon.tail()}`)
  return outcome.url
}

async function ping(url: string): Promise<number> {
  const res = await request(`${url}/v2/`)
  await res.body.dump()
  return res.statusCode
}

/** Milliseconds from spawning `serve` to its first 200 on /v2/. */
async function timeToAnswer(dir: string): Promise<{ ms: number; proc: ServeProcess }> {
  const t0 = performance.now()
  const proc = serve(dir)
  expect(await ping(await listening(proc))).toBe(200)
  return { ms: performance.now() - t0, proc }
}

/**
 * How long a restart may take: 2 s, which it takes with time to spare on an idle machine. A
 * loaded one (shared cores, CI) gets twice what a start without any lock in its way took
 * there and then, so only a start held up by the lock fails, not one held up by the scheduler.
 */
function restartBudget(freshStartMs: number): number {
  return Math.max(2_000, 2 * freshStartMs)
}

/** The one-letter state in /proc/<pid>/stat (R, S, Z...), or undefined once the pid is gone. */
function procState(pid: number): string | undefined {
  try {
    return /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1]
  } catch {
    return undefined
  }
}

async function expectRefused(proc: ServeProcess, dir: string): Promise<void> {
  expect(await proc.outcome).toEqual({ code: 1 })
  expect(proc.stderr()).toContain(`another pullcache is serving ${dir}`)
  expect(proc.lines).toContainEqual(
    expect.objectContaining({
      event: 'start.failed',
      error: expect.objectContaining({ code: 'STORE_LOCKED' }),
    }),
  )
}

describe('one server per store', () => {
  test('a second claim in the same process is refused, and leaves tmp/ of the first alone', async () => {
    const first = await startMirror({ upstream: UPSTREAM })
    dirs.push(first.dataDir)
    try {
      const marker = join(first.dataDir, 'tmp', 'fill-in-progress.part')
      await writeFile(marker, 'x')
      await expect(startMirror({ upstream: UPSTREAM, dataDir: first.dataDir })).rejects.toBeInstanceOf(
        StoreLocked,
      )
      expect(existsSync(marker)).toBe(true)
      expect((await first.get('/v2/')).status).toBe(200)
    } finally {
      await first.close({ wipe: false })
    }
    // Given up on close: the next server starts.
    const again = await startMirror({ upstream: UPSTREAM, dataDir: first.dataDir })
    await again.close({ wipe: false })
  })

  test('a second process is refused with exit 1 and a log line; gc and verify still run beside the server', async () => {
    const mirror = await startMirror({ upstream: UPSTREAM })
    dirs.push(mirror.dataDir)
    try {
      const marker = join(mirror.dataDir, 'tmp', 'fill-in-progress.part')
      await writeFile(marker, 'x')
      await expectRefused(serve(mirror.dataDir), mirror.dataDir)
      expect(existsSync(marker)).toBe(true)
      // These were built to work next to a running server (SQLite WAL, rows before files, and
      // they never empty tmp/), so the lock does not stop them.
      for (const args of [['gc'], ['verify', '--repair']]) {
        const result = await runCli([...args, '--data-dir', mirror.dataDir], { timeoutMs: 20_000 })
        expect(result, args.join(' ')).toMatchObject({ code: 0 })
      }
      expect((await mirror.get('/v2/')).status).toBe(200)
    } finally {
      await mirror.close({ wipe: false })
    }
  })

  test('kill -9 in a loop: each restart answers within 2 s', async () => {
    const dir = await dataDir()
    const fresh = await timeToAnswer(dir)
    let proc = fresh.proc
    const times: number[] = []
    for (let round = 0; round < 3; round++) {
      // No waiting for the old process to be reaped: the next one starts at once.
      process.kill(proc.daemon.pid, 'SIGKILL')
      const next = await timeToAnswer(dir)
      times.push(next.ms)
      proc = next.proc
    }
    console.log(
      `spawn to first 200: fresh start ${Math.round(fresh.ms)} ms; ` +
        `restarts after kill -9 ${times.map((t) => Math.round(t)).join(', ')} ms`,
    )
    for (const ms of times) expect(ms).toBeLessThan(restartBudget(fresh.ms))
  })

  test('a killed server that is still a zombie does not block the restart', async () => {
    const dir = await dataDir()
    // sh starts the server and becomes `sleep`, which never reaps it: after kill -9 the server
    // stays a zombie, pid still taken, until sleep ends.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PULLCACHE_')))
    Object.assign(env, {
      PULLCACHE_LISTEN: '127.0.0.1:0',
      PULLCACHE_DATA_DIR: dir,
      PULLCACHE_UPSTREAM: UPSTREAM,
    })
    let url: string | undefined
    const t0 = performance.now()
    const parent = startDaemon(
      'sh',
      ['-c', '"$0" "$1" serve & echo "server pid $!" >&2; exec sleep 60', process.execPath, MAIN_JS],
      {
        env,
        onLine: (line, stream) => {
          if (stream === 'stdout' && line.includes('"event":"listening"')) url = JSON.parse(line).url
        },
      },
    )
    try {
      const pid = await waitFor(
        async () => {
          const m = /server pid (\d+)/.exec(parent.stderr.join('\n'))
          return m ? Number(m[1]) : undefined
        },
        { timeoutMs: 5_000, intervalMs: 10, what: 'the server pid' },
      )
      expect(
        await ping(await waitFor(async () => url, { timeoutMs: 20_000, intervalMs: 10, what: 'listening' })),
      ).toBe(200)
      const freshMs = performance.now() - t0
      process.kill(pid, 'SIGKILL')
      await waitFor(async () => (procState(pid) === 'Z' ? true : undefined), {
        timeoutMs: 5_000,
        intervalMs: 10,
        what: 'the zombie',
      })
      const { ms } = await timeToAnswer(dir)
      console.log(
        `spawn to first 200: fresh start ${Math.round(freshMs)} ms; restart beside the zombie ${Math.round(ms)} ms`,
      )
      expect(ms).toBeLessThan(restartBudget(freshMs))
      expect(procState(pid)).toBe('Z')
    } finally {
      await parent.stop(5_000)
    }
  })

  test('a pid file naming a live, unrelated process (a reused pid) is ignored', async () => {
    const fresh = await timeToAnswer(await dataDir())
    await fresh.proc.daemon.stop()
    const dir = await dataDir()
    // What an older pullcache left behind when it was killed: its pid, now the test runner's.
    await writeFile(join(dir, 'pullcache.pid'), `${process.pid}\n`)
    const { ms } = await timeToAnswer(dir)
    expect(ms).toBeLessThan(restartBudget(fresh.ms))
  })

  test('two servers as pid 1 in their own pid namespaces: the second is refused', async () => {
    const dir = await dataDir()
    const first = serve(dir, PID_NAMESPACE)
    const url = await listening(first)
    // The server is pid 1 in its namespace, as in a container.
    const [inner] = readFileSync(`/proc/${first.daemon.pid}/task/${first.daemon.pid}/children`, 'utf8')
      .trim()
      .split(' ')
    expect(readFileSync(`/proc/${inner}/status`, 'utf8')).toMatch(/^NSpid:\s+\d+\s+1$/m)
    await mkdir(join(dir, 'tmp'), { recursive: true })
    const marker = join(dir, 'tmp', 'fill-in-progress.part')
    await writeFile(marker, 'x')

    await expectRefused(serve(dir, PID_NAMESPACE), dir)
    expect(existsSync(marker)).toBe(true)
    expect(await ping(url)).toBe(200)
  })
})
