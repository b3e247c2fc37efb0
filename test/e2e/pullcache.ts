// Runs the built daemon (`node dist/main.js serve`) the way an operator would: configured by
// PULLCACHE_* environment variables, logging one JSON object per line on stdout.
//
// The launcher waits for the `{"event":"listening","url":...}` line, keeps every stdout line (parsed)
// and every stderr line across restarts, and restarts on the same data dir and the same port, so
// clients configured with the mirror URL (dockerd) keep working across a restart.
import { randomBytes } from 'node:crypto'
import { statSync } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import { freePort } from '../support/free-ports.js'
import { MAIN_JS } from '../support/run-cli.js'
import { blobDigestOf } from '../support/sha256.js'
import { waitFor } from '../support/wait-for.js'
import { type Daemon, makeTempDir, removeDir, startDaemon } from './processes.js'

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url))

export type LogLine = { event?: string; level?: string; [field: string]: unknown }

/** An access log line ("event":"request"). */
export type AccessLine = LogLine & {
  method: string
  path: string
  status: number
  bytes?: number
  cache?: string
}

export type PullcacheOptions = {
  /** PULLCACHE_UPSTREAM, the counting proxy's URL. */
  upstream: string
  /** Reuse a data dir (e.g. across two instances); by default a fresh temp dir, removed by close(). */
  dataDir?: string
  username?: string
  password?: string
  /** Extra PULLCACHE_* (or other) variables, e.g. { PULLCACHE_TAG_FRESHNESS: '1s' }. */
  env?: Record<string, string>
  readyTimeoutMs?: number
  /** PEM of the CA that signed pullcache's certificate (PULLCACHE_TLS_*), for settle() over HTTPS. */
  ca?: string
}

export type Pullcache = {
  /** http://127.0.0.1:PORT (https:// with TLS) */
  readonly url: string
  /** 127.0.0.1:PORT, for docker:// references. */
  readonly hostPort: string
  readonly dataDir: string
  /** Parsed stdout lines of every run so far; unparsable lines appear as { event: 'unparsed', raw }. */
  readonly lines: LogLine[]
  /** Raw stdout and stderr of every run so far, for leak checks. */
  output(): string
  accessLog(): AccessLine[]
  /** Index into `lines`, to look only at what happened after a point. */
  mark(): number
  accessLogSince(mark: number): AccessLine[]
  /** Sends `signal` to the running process (SIGHUP: reload the config); throws when none runs. */
  signal(signal: NodeJS.Signals): void
  /**
   * Waits for a log line with this event at or after `mark` (see mark()) that passes `match`, and
   * returns it; fails after `timeoutMs`.
   */
  waitForEvent(
    event: string,
    mark: number,
    match?: (line: LogLine) => boolean,
    timeoutMs?: number,
  ): Promise<LogLine>
  /**
   * Makes a request of its own and waits for its access line: pullcache writes its lines in order,
   * so every line of a request answered before (to a client that has exited) is then in `lines`.
   */
  settle(): Promise<void>
  /**
   * Waits until every blob downloaded for a GET answered since `mark` (a 200 "miss") is in the
   * store or has failed. A client has its last byte once the blob is verified; the commit (fsync,
   * rename, index row) follows, and a request meanwhile joins the download ("coalesced").
   */
  stored(mark: number): Promise<void>
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with how the process ended. */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Start again on the same port and data dir, optionally with more environment. */
  start(env?: Record<string, string>): Promise<void>
  /** stop() then start(); resolves with how the old process ended. */
  restart(env?: Record<string, string>): Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  close(): Promise<void>
}

/**
 * Fails when dist/main.js is missing. A build older than src/ only warns: the suite then tests
 * the code as last built, which is what someone editing src/ during a run wants, but should know.
 */
export async function assertBuilt(): Promise<void> {
  let built: number
  try {
    built = statSync(MAIN_JS).mtimeMs
  } catch {
    throw new Error(`${MAIN_JS} does not exist: run \`npm run build\` before the end-to-end tests`)
  }
  const newest = await newestMtime(join(REPO_ROOT, 'src'))
  if (newest > built && !warnedStale) {
    warnedStale = true
    console.warn(`WARNING: ${MAIN_JS} is older than src/; testing the last build (run \`npm run build\`)`)
  }
}
let warnedStale = false

async function newestMtime(dir: string): Promise<number> {
  let newest = 0
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) newest = Math.max(newest, await newestMtime(path))
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, (await stat(path)).mtimeMs)
  }
  return newest
}

export async function startPullcache(options: PullcacheOptions): Promise<Pullcache> {
  await assertBuilt()
  const ownsDataDir = options.dataDir === undefined
  const dataDir = options.dataDir ?? (await makeTempDir('pullcache-data'))
  const lines: LogLine[] = []
  const raw: string[] = []
  let daemon: Daemon | undefined
  // A port the OS does not hand out by itself, so a restart finds it still free.
  let listen = `127.0.0.1:${await freePort()}`
  let url = ''
  let extraEnv: Record<string, string> = {}

  const launch = async () => {
    // Only what the test chose: no PULLCACHE_* (and no config file) leaks in from the outer shell.
    const env: NodeJS.ProcessEnv = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith('PULLCACHE_')),
    )
    Object.assign(env, {
      PULLCACHE_LISTEN: listen,
      PULLCACHE_DATA_DIR: dataDir,
      PULLCACHE_UPSTREAM: options.upstream,
      ...(options.username === undefined ? {} : { PULLCACHE_UPSTREAM_USERNAME: options.username }),
      ...(options.password === undefined ? {} : { PULLCACHE_UPSTREAM_PASSWORD: options.password }),
      ...options.env,
      ...extraEnv,
    })
    let listening: string | undefined
    const d = startDaemon(process.execPath, [MAIN_JS, 'serve'], {
      env,
      cwd: REPO_ROOT,
      onLine: (line, stream) => {
        raw.push(`${stream}| ${line}`)
        if (stream !== 'stdout' || line.trim() === '') return
        let parsed: LogLine
        try {
          parsed = JSON.parse(line) as LogLine
        } catch {
          parsed = { event: 'unparsed', raw: line }
        }
        lines.push(parsed)
        if (parsed.event === 'listening' && typeof parsed.url === 'string') listening = parsed.url
      },
    })
    daemon = d
    // A crash would otherwise show up only as "connection refused" in some later client: say so
    // at once, with the daemon's last words.
    void d.exited.then(({ code, signal }) => {
      if (daemon !== d) return
      daemon = undefined
      console.error(
        `pullcache exited unexpectedly (code ${code}, signal ${signal}); last output:\n${raw.slice(-40).join('\n')}`,
      )
    })
    try {
      url = await waitFor(
        async () => {
          if (!d.isRunning()) throw new Error('pullcache exited before listening')
          return listening
        },
        {
          timeoutMs: options.readyTimeoutMs ?? 20_000,
          intervalMs: 50,
          what: 'pullcache "listening" log line',
        },
      )
    } catch (error) {
      daemon = undefined
      await d.stop(2000)
      throw new Error(`pullcache did not start (listen ${listen}):\n${d.tail(60)}`, { cause: error })
    }
    // Come back on the same port after a restart.
    listen = new URL(url).host
  }

  const stop = async (graceMs = 10_000) => {
    const d = daemon
    daemon = undefined
    if (d === undefined) return { code: null, signal: null }
    await d.stop(graceMs)
    return d.exited
  }

  try {
    await launch()
  } catch (error) {
    // Nothing will call close() on a pullcache that never started: leave no data dir behind.
    if (ownsDataDir) await removeDir(dataDir)
    throw error
  }
  const settle = async () => {
    const path = `/v2/pce2e-settle-${randomBytes(6).toString('hex')}`
    const mark = lines.length
    const dispatcher = new Agent(options.ca === undefined ? {} : { connect: { ca: options.ca } })
    try {
      const res = await request(`${url}${path}`, { dispatcher, signal: AbortSignal.timeout(10_000) })
      await res.body.arrayBuffer()
    } finally {
      await dispatcher.close()
    }
    await waitFor(() => lines.slice(mark).some((l) => l.event === 'request' && l.path === path), {
      timeoutMs: 10_000,
      what: `pullcache access line for ${path}`,
    })
  }
  return {
    get url() {
      return url
    },
    get hostPort() {
      return new URL(url).host
    },
    dataDir,
    lines,
    output: () => raw.join('\n'),
    accessLog: () => lines.filter(isAccessLine),
    mark: () => lines.length,
    accessLogSince: (mark) => lines.slice(mark).filter(isAccessLine),
    signal(signal) {
      if (daemon === undefined) throw new Error(`cannot send ${signal}: pullcache is not running`)
      process.kill(daemon.pid, signal)
    },
    waitForEvent: (event, mark, match = () => true, timeoutMs = 10_000) =>
      waitFor(() => lines.slice(mark).find((l) => l.event === event && match(l)), {
        timeoutMs,
        intervalMs: 25,
        what: `pullcache log line "${event}"`,
      }),
    settle,
    async stored(mark) {
      await settle()
      const downloaded = new Set<string>()
      for (const l of lines.slice(mark).filter(isAccessLine)) {
        const digest = blobDigestOf(l.path)
        if (digest && l.method === 'GET' && l.status === 200 && l.cache === 'miss') downloaded.add(digest)
      }
      for (const digest of downloaded) {
        await waitFor(
          () =>
            lines
              .slice(mark)
              .some(
                (l) =>
                  (l.event === 'store.blob_committed' || l.event === 'store.blob_fill_failed') &&
                  l.digest === digest,
              ),
          { timeoutMs: 30_000, what: `the commit of ${digest}` },
        )
      }
    },
    stop,
    async start(env = {}) {
      if (daemon !== undefined) return
      extraEnv = { ...extraEnv, ...env }
      await launch()
    },
    async restart(env = {}) {
      const exit = await stop()
      extraEnv = { ...extraEnv, ...env }
      await launch()
      return exit
    },
    async close() {
      await stop()
      if (ownsDataDir) await removeDir(dataDir)
    },
  }
}

function isAccessLine(line: LogLine): line is AccessLine {
  return line.event === 'request'
}
