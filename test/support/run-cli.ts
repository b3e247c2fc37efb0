// Runs the built CLI (`node dist/main.js ...`) as a child process, as an operator or a script
// would: runCli for a command that finishes (exit code and output), startCli for `serve` (log
// lines as they come, signals, exit). Asynchronous on purpose: the fake upstream and in-process
// mirrors the child talks to live in the test's own event loop. This is the one way tests start
// the CLI, so the environment it sees is chosen in one place.

import { type ChildProcessByStdio, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import type { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'

export const MAIN_JS = fileURLToPath(new URL('../../dist/main.js', import.meta.url))

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

export interface CliOptions {
  env?: Record<string, string>
  cwd?: string
}

function spawnCli(args: string[], opts: CliOptions): ChildProcessByStdio<null, Readable, Readable> {
  if (!existsSync(MAIN_JS)) throw new Error(`${MAIN_JS} does not exist: run \`npm run build\` first`)
  // Only what the test chose: no PULLCACHE_* leaks in from the shell running the tests.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PULLCACHE_')))
  return spawn(process.execPath, [MAIN_JS, ...args], {
    env: { ...env, ...opts.env },
    cwd: opts.cwd ?? process.cwd(),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
}

export async function runCli(
  args: string[],
  opts: CliOptions & {
    timeoutMs?: number
    /** Like `| head`: take the first chunk of stdout, then close the pipe. */
    closeStdoutEarly?: boolean
  } = {},
): Promise<CliResult> {
  const child = spawnCli(args, opts)
  if (opts.closeStdoutEarly) child.stdout.once('data', () => child.stdout.destroy())
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (s: string) => {
    stdout += s
  })
  child.stderr.setEncoding('utf8').on('data', (s: string) => {
    stderr += s
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000)
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (c) => resolve(c))
  })
  clearTimeout(timer)
  return { code, stdout, stderr }
}

/** A long-running CLI command (`serve`): its JSON log lines as they arrive, and its exit. */
export interface CliProcess {
  /** Every stdout line parsed as JSON, in order. */
  readonly lines: Record<string, unknown>[]
  readonly stderr: () => string
  /** Resolves with the exit code (null when a signal ended it) once the output is all in. */
  readonly exited: Promise<number | null>
  signal(signal: NodeJS.Signals): void
  /** SIGKILL if still running, and wait for the exit: for afterEach/finally. */
  kill(): Promise<void>
}

export function startCli(args: string[], opts: CliOptions = {}): CliProcess {
  const child = spawnCli(args, opts)
  const lines: Record<string, unknown>[] = []
  let stderr = ''
  let partial = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n')
    partial = parts.pop() ?? ''
    for (const line of parts) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
  })
  child.stderr.setEncoding('utf8').on('data', (s: string) => {
    stderr += s
  })
  let running = true
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (code) => {
      running = false
      resolve(code)
    })
  })
  return {
    lines,
    stderr: () => stderr,
    exited,
    signal: (signal) => {
      child.kill(signal)
    },
    async kill() {
      if (!running) return
      child.kill('SIGKILL')
      await exited.catch(() => {})
    },
  }
}
