// Measurements: curl for blob bodies, wrk and ab for manifest requests per second, /proc for RSS.
import { readFileSync, writeFileSync } from 'node:fs'
import { procStat, run } from './procs.mjs'

export const DOCKER_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
].join(', ')

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  if (s.length === 0) return Number.NaN
  const mid = s.length >> 1
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

/**
 * One GET of `url` to /dev/null. Returns curl's figures and the wall time as seen from here
 * (process start to exit), checked: status 200 and `size` bytes, or `ok` is false.
 */
export async function curlGet(url, size, { headers = [] } = {}) {
  const t0 = performance.now()
  const r = await curlOnce(url, headers)
  return { ...r, wall: (r.endedAt - t0) / 1000, ok: r.status === 200 && r.bytes === size }
}

async function curlOnce(url, headers) {
  const args = ['-s', '-L', '-o', '/dev/null', '--max-time', '300']
  for (const h of headers) args.push('-H', h)
  args.push('-w', '%{http_code} %{size_download} %{time_total} %{speed_download}', url)
  const { stdout, endedAt } = await run('curl', args, { timeoutMs: 310_000 })
  const [status, bytes, secs, speed] = stdout.trim().split(' ').map(Number)
  return { status, bytes, secs, speed, endedAt }
}

/**
 * A shell command line under bash, timed: `wall` in seconds and `cpu`, the user + system seconds
 * of everything it ran (bash's `times` for its children), for the references that are not
 * servers (a client writing to disk, dd).
 */
export async function timedShell(line, { timeoutMs = 310_000 } = {}) {
  const t0 = performance.now()
  const { code, stdout, stderr, endedAt } = await run('bash', ['-c', `${line} >/dev/null || exit 1; times`], {
    timeoutMs,
  })
  if (code !== 0) throw new Error(`bench: ${line} failed: ${stderr.slice(-300)}`)
  const children = stdout.trim().split('\n').at(-1)
  const secs = [...children.matchAll(/(\d+)m([\d.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]))
  return { wall: (endedAt - t0) / 1000, cpu: secs[0] + secs[1] }
}

/**
 * `n` GETs of `url` at once, one curl process each. `wall` is from starting the first to the
 * last one finishing; `aggregate` is the bytes of all of them over that wall time, in bytes/s.
 */
export async function parallelGets(url, size, n) {
  const t0 = performance.now()
  const results = await Promise.all(Array.from({ length: n }, () => curlOnce(url, [])))
  const end = Math.max(...results.map((r) => r.endedAt))
  const wall = (end - t0) / 1000
  const ok = results.every((r) => r.status === 200 && r.bytes === size)
  return {
    wall,
    aggregate: results.reduce((a, r) => a + r.bytes, 0) / wall,
    ok,
    statuses: [...new Set(results.map((r) => r.status))],
    slowest: Math.max(...results.map((r) => r.secs)),
    fastest: Math.min(...results.map((r) => r.secs)),
  }
}

/** wrk GET for `seconds` with the Accept header dockerd sends. */
export async function wrkGet(url, seconds, connections) {
  const { stdout } = await run(
    'wrk',
    ['-t1', `-c${connections}`, `-d${seconds}s`, '-H', `Accept: ${DOCKER_ACCEPT}`, url],
    { timeoutMs: (seconds + 30) * 1000 },
  )
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1] ?? Number.NaN)
  const requests = Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0)
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(stdout)?.[1] ?? 0)
  const socketErrors = /Socket errors: (.*)/.exec(stdout)?.[1] ?? null
  return { rps, requests, errors: non2xx, socketErrors, ok: requests > 0 && non2xx === 0 }
}

/**
 * ab (ApacheBench) with keep-alive, for `seconds`; HEAD with head=true. wrk 4.1 cannot do HEAD:
 * it waits for the body a HEAD response's Content-Length announces and never completes one.
 */
export async function abRequests(url, seconds, connections, { head }) {
  const args = ['-q', '-k', '-c', String(connections), '-t', String(seconds), '-n', '100000000', '-s', '10']
  if (head) args.push('-i')
  args.push('-H', `Accept: ${DOCKER_ACCEPT}`, url)
  const { stdout } = await run('ab', args, { timeoutMs: (seconds + 30) * 1000 })
  const rps = Number(/Requests per second:\s+([\d.]+)/.exec(stdout)?.[1] ?? Number.NaN)
  const complete = Number(/Complete requests:\s+(\d+)/.exec(stdout)?.[1] ?? 0)
  const failed = Number(/Failed requests:\s+(\d+)/.exec(stdout)?.[1] ?? 0)
  const non2xx = Number(/Non-2xx responses:\s+(\d+)/.exec(stdout)?.[1] ?? 0)
  const keepAlive = Number(/Keep-Alive requests:\s+(\d+)/.exec(stdout)?.[1] ?? 0)
  return {
    rps,
    requests: complete,
    errors: failed + non2xx,
    keepAlive,
    ok: complete > 0 && failed + non2xx === 0,
  }
}

const CLOCK_TICKS_PER_SECOND = 100 // sysconf(_SC_CLK_TCK): 100 on every Linux architecture Debian ships

/** CPU seconds (user + system) used so far by these processes, from /proc/PID/stat. */
export function cpuSeconds(pids) {
  let ticks = 0
  for (const pid of pids) {
    try {
      const { fields } = procStat(pid)
      ticks += Number(fields[11]) + Number(fields[12])
    } catch {}
  }
  return ticks / CLOCK_TICKS_PER_SECOND
}

/** Runs `work` and adds the CPU seconds `pids` used meanwhile to the result as `cpu`. */
export async function withCpu(pids, work) {
  const before = cpuSeconds(pids)
  const result = await work()
  return { ...result, cpu: cpuSeconds(pids) - before }
}

function statusKb(pid, field) {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : 0
  } catch {
    return 0
  }
}

/** Resident memory now, summed over the processes. */
export const rssOf = (pids) => pids.reduce((a, pid) => a + statusKb(pid, 'VmRSS'), 0)

/**
 * Peak resident memory of a server (the sum over its processes) while `work` runs: VmHWM, reset
 * through /proc/PID/clear_refs before `work` starts, and VmRSS sampled every 20 ms as a check.
 */
export async function peakRss(pids, work) {
  let hwmReset = true
  for (const pid of pids) {
    try {
      writeFileSync(`/proc/${pid}/clear_refs`, '5')
    } catch {
      hwmReset = false
    }
  }
  const before = pids.reduce((a, pid) => a + statusKb(pid, 'VmRSS'), 0)
  let sampled = before
  const timer = setInterval(() => {
    sampled = Math.max(
      sampled,
      pids.reduce((a, pid) => a + statusKb(pid, 'VmRSS'), 0),
    )
  }, 20)
  let result
  try {
    result = await work()
  } finally {
    clearInterval(timer)
  }
  const hwm = pids.reduce((a, pid) => a + statusKb(pid, 'VmHWM'), 0)
  return { before, sampled, hwm: hwmReset ? hwm : null, peak: Math.max(sampled, hwmReset ? hwm : 0), result }
}
