// How the reliability checks talk to a server and read its process: a blob pull judged by what the
// client ends up holding, a raw HTTP/1.1 exchange for requests no HTTP library would send, and the
// /proc figures (resident memory, open descriptors).
import { readdirSync, readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { request } from 'undici'
import { sha256 } from '../support/sha256.js'

/**
 * What a client got from a pull:
 *   ok       200 and the expected bytes
 *   error    an error status with an OCI error body ({"errors":[...]}), or the connection cut
 *            (before the headers or mid-body): a client notices both and retries
 *   wrong    a clean 200 whose bytes are not the blob (wrong or short): the one outcome that hurts
 *   bad-error an error status without an OCI error body
 *   timeout  nothing conclusive within the client's deadline (a hang)
 */
export type PullOutcome = 'ok' | 'error' | 'wrong' | 'bad-error' | 'timeout'

export interface Pull {
  outcome: PullOutcome
  status: number | undefined
  detail: string
  ms: number
}

/** True for an OCI error body: {"errors":[{"code":...,"message":...}, ...]} with at least one error. */
export function isOciErrorBody(body: string): boolean {
  try {
    const parsed = JSON.parse(body) as { errors?: unknown }
    return (
      Array.isArray(parsed.errors) &&
      parsed.errors.length > 0 &&
      parsed.errors.every(
        (e) => typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string',
      )
    )
  } catch {
    return false
  }
}

export async function pullBlob(
  base: string,
  path: string,
  expectedDigest: string,
  { deadlineMs = 30_000, headers = {} }: { deadlineMs?: number; headers?: Record<string, string> } = {},
): Promise<Pull> {
  const t0 = performance.now()
  const ms = () => Math.round(performance.now() - t0)
  const signal = AbortSignal.timeout(deadlineMs)
  let status: number | undefined
  try {
    const res = await request(`${base}${path}`, {
      headers,
      signal,
      headersTimeout: deadlineMs,
      bodyTimeout: deadlineMs,
    })
    status = res.statusCode
    let body: Buffer
    try {
      body = Buffer.from(await res.body.arrayBuffer())
    } catch (err) {
      if (signal.aborted) return { outcome: 'timeout', status, detail: 'body not finished', ms: ms() }
      return { outcome: 'error', status, detail: `cut mid-body: ${(err as Error).message}`, ms: ms() }
    }
    if (status === 200) {
      const got = sha256(body)
      if (got === expectedDigest) return { outcome: 'ok', status, detail: '', ms: ms() }
      return { outcome: 'wrong', status, detail: `200 with ${body.length} bytes hashing to ${got}`, ms: ms() }
    }
    if (status >= 400 && isOciErrorBody(body.toString('utf8'))) {
      return { outcome: 'error', status, detail: body.toString('utf8').slice(0, 200), ms: ms() }
    }
    const what = status >= 400 ? 'bad-error' : 'wrong'
    return { outcome: what, status, detail: `${status}: ${body.toString('utf8').slice(0, 120)}`, ms: ms() }
  } catch (err) {
    if (signal.aborted) return { outcome: 'timeout', status, detail: 'no answer', ms: ms() }
    return { outcome: 'error', status, detail: `cut: ${(err as Error).message}`, ms: ms() }
  }
}

export interface RawResponse {
  /** undefined when the server closed without answering. */
  status: number | undefined
  head: string
  body: Buffer
  timedOut: boolean
}

/**
 * Sends `raw` (a whole HTTP/1.x request, as bytes the client chooses) on a fresh connection and
 * reads until the server closes it or `timeoutMs` passes. The request should ask for
 * `Connection: close`; a chunked response body is decoded.
 */
export function rawRequest(url: string, raw: string | Buffer, timeoutMs = 10_000): Promise<RawResponse> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    const socket = connect({ host: hostname, port: Number(port) })
    let done = false
    const finish = (timedOut: boolean) => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      resolve(parseResponse(Buffer.concat(chunks), timedOut))
    }
    const timer = setTimeout(() => finish(true), timeoutMs)
    socket.on('connect', () => socket.write(raw))
    socket.on('data', (d: Buffer) => {
      chunks.push(d)
      // A response to HEAD, or one with a length, is complete before the server closes.
      const parsed = parseResponse(Buffer.concat(chunks), false)
      if (parsed.status !== undefined && parsed.complete) finish(false)
    })
    socket.on('error', () => finish(false))
    socket.on('close', () => finish(false))
  })
}

function parseResponse(bytes: Buffer, timedOut: boolean): RawResponse & { complete: boolean } {
  const end = bytes.indexOf('\r\n\r\n')
  if (end < 0)
    return {
      status: undefined,
      head: bytes.toString('latin1'),
      body: Buffer.alloc(0),
      timedOut,
      complete: false,
    }
  const head = bytes.subarray(0, end).toString('latin1')
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? Number.NaN)
  let body = bytes.subarray(end + 4)
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1]
  let complete = length !== undefined && body.length >= Number(length)
  if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
    const decoded = dechunk(body)
    complete = decoded.complete
    body = decoded.body
  }
  return { status: Number.isNaN(status) ? undefined : status, head, body, timedOut, complete }
}

function dechunk(bytes: Buffer): { body: Buffer; complete: boolean } {
  const out: Buffer[] = []
  let at = 0
  for (;;) {
    const eol = bytes.indexOf('\r\n', at)
    if (eol < 0) return { body: Buffer.concat(out), complete: false }
    const size = Number.parseInt(bytes.subarray(at, eol).toString('latin1'), 16)
    if (!(size >= 0)) return { body: Buffer.concat(out), complete: false }
    if (size === 0) return { body: Buffer.concat(out), complete: true }
    out.push(bytes.subarray(eol + 2, eol + 2 + size))
    at = eol + 2 + size + 2
    if (at > bytes.length) return { body: Buffer.concat(out), complete: false }
  }
}

function statusKb(pid: number, field: string): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m?.[1] === undefined ? 0 : Number(m[1]) * 1024
  } catch {
    return 0
  }
}

/** Resident memory of a process, bytes (0 once it is gone). */
export const rssOf = (pid: number): number => statusKb(pid, 'VmRSS')

/** Open file descriptors of a process (sockets, files, pipes), or -1 once it is gone. */
export function fdsOf(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length
  } catch {
    return -1
  }
}

/** `sep`-joined 1-decimal MiB figure. */
export const mib = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(1)} MiB`
