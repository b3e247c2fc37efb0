// Child processes, ports and temp dirs for the end-to-end harness (bounded waiting is
// test/support/wait-for.ts).
//
// Every wait here has a deadline and every child is registered so that a crashing test worker still
// kills what it started (see the 'exit' hook below): an e2e run must never leave a registry or a
// dockerd behind, and must never hang.
import { type ChildProcess, spawn } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'

// Debian package that provides each external binary, so a missing one fails with the fix in the message.
const APT_PACKAGE: Record<string, string> = {
  'docker-registry': 'docker-registry',
  skopeo: 'skopeo',
  dockerd: 'docker.io',
  docker: 'docker.io',
  containerd: 'containerd',
  runc: 'runc',
  openssl: 'openssl',
  nginx: 'nginx-light',
}

/** Absolute path of a binary, preferring `preferred` paths; throws with the apt package to install. */
export function requireBinary(name: string, preferred: readonly string[] = []): string {
  const candidates = [
    ...preferred,
    ...(process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin')
      .split(delimiter)
      .concat(['/usr/sbin', '/sbin'])
      .map((dir) => join(dir, name)),
  ]
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {}
  }
  const pkg = APT_PACKAGE[name] ?? name
  throw new Error(
    `e2e prerequisite missing: '${name}' is not installed (apt-get install -y ${pkg}). ` +
      'The end-to-end tests never skip; install it or do not run test/e2e.',
  )
}

/** Short paths on purpose: dockerd nests unix sockets under these and sun_path is 108 bytes. */
export async function makeTempDir(label: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `pce2e-${label}-`))
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 })
}

export type RunResult = { stdout: string; stderr: string; code: number; durationMs: number }
export type RunOptions = {
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
  cwd?: string
  /** Resolve instead of throwing when the command exits non-zero. */
  allowFailure?: boolean
}

/** Runs a command to completion with a deadline; the error carries the full command line and stderr. */
export async function run(
  command: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? 60_000
  const started = Date.now()
  const child = spawn(command, args, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  track(child)
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk
  })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
  })
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    child.kill('SIGKILL')
  }, timeoutMs)
  const code = await new Promise<number>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (exitCode, signal) => resolve(exitCode ?? (signal === null ? -1 : 128)))
  }).finally(() => clearTimeout(timer))
  const result = { stdout, stderr, code, durationMs: Date.now() - started }
  if (timedOut || (code !== 0 && options.allowFailure !== true)) {
    const why = timedOut ? `timed out after ${timeoutMs} ms` : `exited with ${code}`
    throw new Error(
      `${command} ${args.join(' ')} ${why}\n--- stderr ---\n${stderr.slice(-4000)}\n--- stdout ---\n${stdout.slice(-2000)}`,
    )
  }
  return result
}

export type DaemonOptions = {
  env?: NodeJS.ProcessEnv
  cwd?: string
  /** Called for every complete stdout/stderr line, e.g. to detect readiness. */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void
}

/**
 * A long-running child in its own process group, so that stop() also reaches what it forked
 * (dockerd supervises a containerd). Output is kept line by line for assertions and diagnostics.
 */
export type Daemon = {
  readonly pid: number
  readonly stdout: string[]
  readonly stderr: string[]
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  isRunning(): boolean
  stop(graceMs?: number): Promise<void>
  /** The last lines of output, for error messages. */
  tail(lines?: number): string
}

export function startDaemon(command: string, args: readonly string[], options: DaemonOptions = {}): Daemon {
  const child = spawn(command, args, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  track(child)
  const pid = child.pid
  if (pid === undefined) throw new Error(`could not start ${command}`)
  const stdout: string[] = []
  const stderr: string[] = []
  const collect = (stream: NodeJS.ReadableStream, into: string[], name: 'stdout' | 'stderr') => {
    let partial = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk: string) => {
      const parts = (partial + chunk).split('\n')
      partial = parts.pop() ?? ''
      for (const line of parts) {
        into.push(line)
        options.onLine?.(line, name)
      }
    })
    stream.on('end', () => {
      if (partial !== '') {
        into.push(partial)
        options.onLine?.(partial, name)
      }
    })
  }
  collect(child.stdout!, stdout, 'stdout')
  collect(child.stderr!, stderr, 'stderr')
  let running = true
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    // 'close' rather than 'exit': the last output lines are only guaranteed to be in by then.
    child.once('close', (code, signal) => {
      running = false
      resolve({ code, signal })
    })
  })
  const signalGroup = (signal: NodeJS.Signals) => {
    try {
      process.kill(-pid, signal)
    } catch {
      // The group is already gone.
    }
  }
  return {
    pid,
    stdout,
    stderr,
    exited,
    isRunning: () => running,
    async stop(graceMs = 10_000) {
      if (!running) return
      signalGroup('SIGTERM')
      const timer = setTimeout(() => signalGroup('SIGKILL'), graceMs)
      await exited
      clearTimeout(timer)
      // Children of the leader (containerd under dockerd) may outlive it by a moment.
      signalGroup('SIGKILL')
    },
    tail(lines = 40) {
      return [
        ...stdout.slice(-lines).map((l) => `out| ${l}`),
        ...stderr.slice(-lines).map((l) => `err| ${l}`),
      ].join('\n')
    },
  }
}

// Safety net for a worker that dies without running afterAll: kill every child we started.
const liveChildren = new Set<ChildProcess>()
function track(child: ChildProcess): void {
  liveChildren.add(child)
  child.once('exit', () => liveChildren.delete(child))
}
process.once('exit', () => {
  for (const child of liveChildren) {
    if (child.pid === undefined) continue
    try {
      process.kill(-child.pid, 'SIGKILL')
    } catch {}
    try {
      child.kill('SIGKILL')
    } catch {}
  }
})
