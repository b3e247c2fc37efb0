// Child processes of the bench: daemons (servers) and one-shot tools (curl, wrk, ab).
// Every child is tracked and killed when the bench exits, however it exits. Daemons are also
// written to $BENCH_WORK/pids as "pid starttime name", so bench/run's EXIT trap can kill what a
// crashed bench left behind, and only those exact processes (a reused pid has another start time).
import { spawn, spawnSync } from 'node:child_process'
import { appendFileSync, createWriteStream, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'

const live = new Set()
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Removes a tree the bench wrote, synchronously (it also runs in an exit handler). `rm -rf` took
 * minutes on a million-blob store where Node's rmSync took over 40; rmSync is the fallback.
 */
export function removeTree(dir) {
  const rm = spawnSync('rm', ['-rf', '--', dir], { stdio: 'ignore' })
  if (rm.status !== 0) rmSync(dir, { recursive: true, force: true })
}
let pidsFile

export function trackPidsIn(file) {
  pidsFile = file
  writeFileSync(file, '')
}

/** Lists a process for bench/run's EXIT trap (e.g. nginx's workers, which are not our children). */
export function recordPid(pid, name) {
  if (pidsFile) appendFileSync(pidsFile, `${pid} ${startTime(pid) ?? 0} ${name}\n`)
}

function signalAll(signal) {
  for (const child of live) {
    try {
      child.kill(signal)
    } catch {}
  }
}
// On any exit (a crash too): TERM, so nginx's master takes its workers down with it. bench/run's
// EXIT trap kills whatever is still there after a grace period.
process.on('exit', () => signalAll('SIGTERM'))
let stopping = false
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, async () => {
    if (stopping) return
    stopping = true
    signalAll('SIGTERM')
    for (let i = 0; i < 50 && live.size > 0; i++) await sleep(100)
    signalAll('SIGKILL')
    process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1))
  })
}

/**
 * A process's or thread's /proc stat file (`path`: "PID" or "PID/task/TID"): its command name and
 * the fields after it, so that fields[0] is the state (field 3 in proc(5)) and fields[k] is field
 * k + 3. Throws if the process is gone.
 */
export function procStat(path) {
  const stat = readFileSync(`/proc/${path}/stat`, 'utf8')
  const close = stat.lastIndexOf(')')
  return { comm: stat.slice(stat.indexOf('(') + 1, close), fields: stat.slice(close + 2).split(' ') }
}

/** Start time of a process in clock ticks since boot (/proc/PID/stat field 22), or null. */
export function startTime(pid) {
  try {
    return procStat(pid).fields[19] ?? null
  } catch {
    return null
  }
}

export function childrenOf(pid) {
  const out = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (Number(procStat(name).fields[1]) === pid) out.push(Number(name))
    } catch {}
  }
  return out
}

export async function freePort() {
  const server = createServer()
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

/**
 * Runs a tool to completion and collects its output. `timeoutMs` bounds it: the tool is killed
 * then and the promise rejects.
 */
export function run(cmd, args, { timeoutMs = 120_000, env } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env })
    live.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => {
      stdout += d
    })
    child.stderr.on('data', (d) => {
      stderr += d
    })
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      live.delete(child)
      reject(err)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      live.delete(child)
      const endedAt = performance.now()
      if (timedOut) reject(new Error(`${cmd} timed out after ${timeoutMs} ms: ${stderr.slice(-500)}`))
      else resolve({ code, signal, stdout, stderr, endedAt })
    })
  })
}

/**
 * A long-running server. `ready` is polled (bounded by readyTimeoutMs) until it returns a truthy
 * value; it gets the daemon, whose `output()` holds what the process printed so far.
 */
export async function startDaemon(name, cmd, args, { env, logDir, ready, readyTimeoutMs = 20_000 }) {
  const logPath = join(logDir, `${name}.log`)
  const log = createWriteStream(logPath, { flags: 'a' })
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env })
  live.add(child)
  let output = ''
  let exited = false
  const onData = (d) => {
    log.write(d)
    if (output.length < 64 * 1024) output += d
  }
  child.stdout.on('data', onData)
  child.stderr.on('data', onData)
  const exitedPromise = new Promise((resolve) => {
    child.on('exit', () => {
      exited = true
      live.delete(child)
      resolve()
    })
  })
  child.on('error', (err) => {
    onData(`spawn error: ${err.message}\n`)
  })
  if (child.pid !== undefined) recordPid(child.pid, name)
  const daemon = {
    name,
    pid: child.pid,
    output: () => output,
    isRunning: () => !exited,
    async stop(graceMs = 12_000) {
      if (exited) return
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
      await exitedPromise
      clearTimeout(timer)
      log.end()
    },
  }
  const deadline = performance.now() + readyTimeoutMs
  let lastError
  for (;;) {
    if (exited) throw new Error(`${name} exited during start:\n${output.slice(-2000)}`)
    try {
      const value = await ready(daemon)
      if (value) {
        daemon.ready = value
        return daemon
      }
    } catch (err) {
      lastError = err
    }
    if (performance.now() > deadline) {
      await daemon.stop(2000)
      throw new Error(
        `${name} not ready after ${readyTimeoutMs} ms (${lastError?.message ?? ''}):\n${output}`,
      )
    }
    await sleep(50)
  }
}

/** A `ready` check: the first JSON line printed with "event":"listening"; resolves to its url. */
export function listeningLine(daemon) {
  for (const line of daemon.output().split('\n')) {
    if (!line.includes('"listening"')) continue
    try {
      const parsed = JSON.parse(line)
      if (parsed.event === 'listening' && parsed.url) return parsed.url
    } catch {}
  }
  return undefined
}

/** A `ready` check factory: `method` url answers with `status`. */
export function answers(url, status = 200, method = 'GET') {
  return async () => {
    const res = await fetch(url, { method, signal: AbortSignal.timeout(1000) })
    await res.arrayBuffer()
    return res.status === status ? url : undefined
  }
}
