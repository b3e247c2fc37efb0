// Runs the built CLI (`node dist/main.js ...`) as a child process, as an operator or a script
// would, and collects its exit code and output. Asynchronous on purpose: the fake upstream and
// in-process mirrors the child talks to live in the test's own event loop.

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export const MAIN_JS = fileURLToPath(new URL('../../dist/main.js', import.meta.url))

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

export async function runCli(
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
): Promise<CliResult> {
  if (!existsSync(MAIN_JS)) throw new Error(`${MAIN_JS} does not exist: run \`npm run build\` first`)
  // Only what the test chose: no PULLCACHE_* leaks in from the shell running the tests.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PULLCACHE_')))
  const child = spawn(process.execPath, [MAIN_JS, ...args], {
    env: { ...env, ...opts.env },
    cwd: opts.cwd ?? process.cwd(),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
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
