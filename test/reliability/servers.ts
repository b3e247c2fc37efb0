// The two servers the reliability checks run against, started the same way: a child process on a
// fixed loopback port with its store in a directory the check chooses, so a check can kill -9 it,
// restart it on the same store, read its /proc figures and grep its output.
//
//   pullcache      node dist/main.js serve     PULLCACHE_* env + a JSON config file
//   distribution   docker-registry serve FILE  proxy.remoteurl, filesystem storage (Debian's 2.8)
//
// Both mirror the same upstream (the fake Docker Hub of test/support, or any registry URL) with the
// same optional upstream account and the same optional htpasswd file for their own clients.
import { existsSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type Daemon, requireBinary, startDaemon } from '../e2e/processes.js'
import { freePort } from '../support/free-ports.js'

export type ServerKind = 'pullcache' | 'distribution'
export const SERVER_KINDS: readonly ServerKind[] = ['pullcache', 'distribution']

export interface ServerOptions {
  upstream: string
  /** The store: pullcache's data_dir, distribution's storage root. Created if missing. */
  dataDir: string
  /** Upstream account the mirror pulls with. */
  upstreamUser?: { username: string; password: string }
  /** An htpasswd (bcrypt) file the mirror's own clients authenticate against. */
  htpasswdFile?: string
}

export interface ServerUnderTest {
  readonly kind: ServerKind
  readonly url: string
  readonly dataDir: string
  /** Of the running process; undefined between kill9() and start(). */
  readonly pid: number | undefined
  isRunning(): boolean
  /** Everything the process printed, stdout and stderr, across restarts. */
  output(): string
  /** How long the first start took, store empty, to compare a restart with. */
  readonly firstStartMs: number
  /** Starts the process and waits until GET /v2/ answers; resolves to how long that took (ms). */
  start(timeoutMs?: number): Promise<number>
  kill9(): Promise<void>
  stop(): Promise<void>
}

const MAIN_JS = fileURLToPath(new URL('../../dist/main.js', import.meta.url))

// Upstream deadlines short enough that a hung or stalled upstream is noticed within a check's
// bounded wait; the same values an operator would pick for a LAN upstream. distribution has no
// such settings: it runs with its built-in ones.
const PULLCACHE_CONFIG = { upstream: { header_timeout: '5s', idle_timeout: '5s' } }

export async function startServer(kind: ServerKind, opts: ServerOptions): Promise<ServerUnderTest> {
  await mkdir(opts.dataDir, { recursive: true })
  const port = await freePort()
  const confDir = `${opts.dataDir}.conf`
  await mkdir(confDir, { recursive: true })
  const launch =
    kind === 'pullcache'
      ? await pullcacheLaunch(opts, port, confDir)
      : await distributionLaunch(opts, port, confDir)
  const url = `http://127.0.0.1:${port}`
  const lines: string[] = []
  let daemon: Daemon | undefined
  let firstStartMs = 0
  const server: ServerUnderTest = {
    kind,
    url,
    dataDir: opts.dataDir,
    get firstStartMs() {
      return firstStartMs
    },
    get pid() {
      return daemon?.isRunning() ? daemon.pid : undefined
    },
    isRunning: () => daemon?.isRunning() ?? false,
    output: () => lines.join('\n'),
    async start(timeoutMs = 20_000) {
      const t0 = performance.now()
      const d = startDaemon(launch.command, launch.args, { env: launch.env, onLine: (l) => lines.push(l) })
      daemon = d
      const deadline = t0 + timeoutMs
      for (;;) {
        if (!d.isRunning()) throw new Error(`${kind} exited during start:\n${d.tail()}`)
        try {
          const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) })
          await res.arrayBuffer()
          // 401: a server that asks its clients to authenticate is up all the same.
          if (res.status === 200 || res.status === 401) return performance.now() - t0
        } catch {}
        if (performance.now() > deadline) {
          await d.stop(2000)
          throw new Error(`${kind} did not answer GET /v2/ within ${timeoutMs} ms:\n${d.tail()}`)
        }
        await new Promise((r) => setTimeout(r, 20))
      }
    },
    async kill9() {
      const d = daemon
      if (d === undefined || !d.isRunning()) return
      try {
        process.kill(-d.pid, 'SIGKILL')
      } catch {}
      await d.exited
    },
    async stop() {
      await daemon?.stop(5000)
    },
  }
  firstStartMs = Math.round(await server.start())
  return server
}

interface Launch {
  command: string
  args: string[]
  env: NodeJS.ProcessEnv
}

/** The environment without variables either server would take as configuration. */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('PULLCACHE_') && !k.startsWith('REGISTRY_')),
  )
}

async function pullcacheLaunch(opts: ServerOptions, port: number, confDir: string): Promise<Launch> {
  const config = join(confDir, 'pullcache.json')
  if (!existsSync(MAIN_JS)) throw new Error(`${MAIN_JS} does not exist: run \`npm run build\` first`)
  await writeFile(config, JSON.stringify(PULLCACHE_CONFIG))
  const env: NodeJS.ProcessEnv = {
    ...cleanEnv(),
    PULLCACHE_CONFIG: config,
    PULLCACHE_LISTEN: `127.0.0.1:${port}`,
    PULLCACHE_DATA_DIR: opts.dataDir,
    PULLCACHE_UPSTREAM: opts.upstream,
    PULLCACHE_LOG_LEVEL: 'debug',
  }
  if (opts.upstreamUser) {
    env.PULLCACHE_UPSTREAM_USERNAME = opts.upstreamUser.username
    env.PULLCACHE_UPSTREAM_PASSWORD = opts.upstreamUser.password
  }
  if (opts.htpasswdFile) env.PULLCACHE_AUTH_HTPASSWD = opts.htpasswdFile
  return { command: process.execPath, args: [MAIN_JS, 'serve'], env }
}

async function distributionLaunch(opts: ServerOptions, port: number, confDir: string): Promise<Launch> {
  const config = join(confDir, 'config.yml')
  const proxy: Record<string, string> = { remoteurl: opts.upstream }
  if (opts.upstreamUser) {
    proxy.username = opts.upstreamUser.username
    proxy.password = opts.upstreamUser.password
  }
  // JSON is valid YAML.
  const yaml = {
    version: 0.1,
    log: { level: 'debug', formatter: 'text', accesslog: { disabled: false } },
    storage: {
      filesystem: { rootdirectory: opts.dataDir },
      delete: { enabled: true },
      maintenance: { uploadpurging: { enabled: false } },
    },
    http: { addr: `127.0.0.1:${port}`, secret: 'pullcache-reliability' },
    proxy,
    ...(opts.htpasswdFile ? { auth: { htpasswd: { realm: 'reliability', path: opts.htpasswdFile } } } : {}),
  }
  await writeFile(config, JSON.stringify(yaml, null, 2))
  return { command: requireBinary('docker-registry'), args: ['serve', config], env: cleanEnv() }
}
