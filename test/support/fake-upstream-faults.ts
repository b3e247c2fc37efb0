// Faults the real registry cannot be made to produce on demand, and the one function that puts a
// Reply on the wire, with or without a body fault.
//
// Faults act in one of two phases:
//   early  (status, hang, reset)      the request is answered by the fault instead of the handler,
//                                     before authentication, so it hits the very next matching request;
//   body   (cut, corrupt, short,      the handler answers, and the fault mangles its body. Only a
//           slow, stall, empty,       GET answered 200 or 206 with a body consumes one, so a 401 or a
//           unsized, long)            307 in front of the real download does not use it up.
import type { ServerResponse } from 'node:http'
import type { Reply } from './fake-upstream-http.js'

export type Host = 'registry' | 'cdn' | 'auth'

export type Fault =
  // The response is replaced by this status; headers are merged over the defaults, and a missing
  // body becomes the OCI error JSON distribution would send for the status.
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: string }
  // Headers carry the full Content-Length; the socket is destroyed after N body bytes. N is clamped
  // to length - 1 so the cut is always observable.
  | { kind: 'cut'; afterBytes: number }
  // Same length, last byte flipped: sizes agree, digests do not, and a streaming verifier only finds
  // out at the very end.
  | { kind: 'corrupt' }
  // Content-Length is one more than the body; the whole body is sent, then the socket is destroyed.
  | { kind: 'short' }
  // The body trickles: chunkBytes every delayMs.
  | { kind: 'slow'; chunkBytes: number; delayMs: number }
  // No response at all until close().
  | { kind: 'hang' }
  // The socket is destroyed before any response.
  | { kind: 'reset' }
  // N body bytes (clamped to length - 1), then silence with the socket open until close().
  | { kind: 'stall'; afterBytes: number }
  // Content-Length: 0 and no body, cleanly ended: a registry or CDN that lost the object.
  | { kind: 'empty' }
  // No Content-Length (chunked), the first N body bytes (the whole body when N is left out; else
  // clamped to length - 1), then a clean end: a short body nothing on the wire gives away.
  | { kind: 'unsized'; afterBytes?: number }
  // Content-Length is one less than the body; the whole body is sent. The reader takes the
  // declared bytes and the last byte is garbage on the connection.
  | { kind: 'long' }

export type EarlyFault = Extract<Fault, { kind: 'status' | 'hang' | 'reset' }>
export type BodyFault = Exclude<Fault, EarlyFault>

export interface FaultMatch {
  method?: string
  path: string | RegExp
  host?: Host
}

interface Armed {
  match: FaultMatch
  fault: Fault
  remaining: number
}

function isEarly(f: Fault): f is EarlyFault {
  return f.kind === 'status' || f.kind === 'hang' || f.kind === 'reset'
}

export function pathMatches(pattern: string | RegExp, path: string): boolean {
  if (typeof pattern === 'string') return pattern === path
  // A /g or /y regex keeps lastIndex between test() calls and would then miss every other request.
  pattern.lastIndex = 0
  return pattern.test(path)
}

export class FaultTable {
  #armed: Armed[] = []

  add(match: FaultMatch, fault: Fault, times = Number.POSITIVE_INFINITY): void {
    if (!(times > 0) || (Number.isFinite(times) && !Number.isInteger(times))) {
      throw new RangeError(`fake upstream: fault times must be a positive integer, got ${times}`)
    }
    validate(fault)
    this.#armed.push({ match, fault, remaining: times })
  }

  clear(): void {
    this.#armed = []
  }

  takeEarly(host: Host, method: string, path: string): EarlyFault | undefined {
    const f = this.#take(host, method, path, true)
    return f !== undefined && isEarly(f) ? f : undefined
  }

  takeBody(host: Host, method: string, path: string): BodyFault | undefined {
    const f = this.#take(host, method, path, false)
    return f !== undefined && !isEarly(f) ? f : undefined
  }

  // First armed, first served: a test that stacks faults on one path gets them in the order it wrote.
  #take(host: Host, method: string, path: string, early: boolean): Fault | undefined {
    const i = this.#armed.findIndex(
      (a) =>
        isEarly(a.fault) === early &&
        (a.match.host ?? 'registry') === host &&
        (a.match.method === undefined || a.match.method.toUpperCase() === method) &&
        pathMatches(a.match.path, path),
    )
    const a = this.#armed[i]
    if (a === undefined) return undefined
    a.remaining -= 1
    if (a.remaining <= 0) this.#armed.splice(i, 1)
    return a.fault
  }
}

function validate(f: Fault): void {
  const bad = (what: string) => new RangeError(`fake upstream: ${f.kind} fault needs ${what}`)
  if ((f.kind === 'cut' || f.kind === 'stall') && !(Number.isInteger(f.afterBytes) && f.afterBytes >= 0)) {
    throw bad('afterBytes >= 0')
  }
  if (
    f.kind === 'unsized' &&
    f.afterBytes !== undefined &&
    !(Number.isInteger(f.afterBytes) && f.afterBytes >= 0)
  ) {
    throw bad('afterBytes >= 0 or none')
  }
  if (f.kind === 'slow' && !(Number.isInteger(f.chunkBytes) && f.chunkBytes > 0 && f.delayMs >= 0)) {
    throw bad('chunkBytes > 0 and delayMs >= 0')
  }
  if (f.kind === 'status' && !(Number.isInteger(f.status) && f.status >= 100 && f.status <= 599)) {
    throw bad('a status between 100 and 599')
  }
}

// Timers of trickling bodies, so close() can stop them instead of leaving the event loop busy.
export class TimerSet {
  readonly #timers = new Set<NodeJS.Timeout>()

  after(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.#timers.delete(t)
      fn()
    }, ms)
    this.#timers.add(t)
  }

  clear(): void {
    for (const t of this.#timers) clearTimeout(t)
    this.#timers.clear()
  }
}

// Puts a reply on the wire. Content-Length is always explicit, also for HEAD (Node leaves it out,
// and clients fall back to GET without it).
export function writeReply(
  res: ServerResponse,
  reply: Reply,
  head: boolean,
  fault: BodyFault | undefined,
  timers: TimerSet,
): void {
  const { status, headers, body } = reply
  if (head || fault === undefined) {
    res.writeHead(status, { ...headers, 'content-length': String(body.length) })
    res.end(head ? undefined : body)
    return
  }
  const withLength = (n: number) => ({ ...headers, 'content-length': String(n) })
  // Cut points stop short of the end so the client never receives a complete body by accident.
  const cutAt = (n: number) => Math.min(n, Math.max(0, body.length - 1))
  switch (fault.kind) {
    case 'corrupt': {
      const flipped = Uint8Array.from(body)
      const last = flipped.length - 1
      if (last >= 0) flipped[last] = (flipped[last] ?? 0) ^ 0xff
      res.writeHead(status, withLength(body.length))
      res.end(flipped)
      return
    }
    case 'cut':
      res.writeHead(status, withLength(body.length))
      // The callback runs once the bytes are handed to the socket, so they reach the client first.
      res.write(body.subarray(0, cutAt(fault.afterBytes)), () => res.destroy())
      return
    case 'short':
      res.writeHead(status, withLength(body.length + 1))
      res.write(body, () => res.destroy())
      return
    case 'stall':
      res.writeHead(status, withLength(body.length))
      res.write(body.subarray(0, cutAt(fault.afterBytes)))
      return
    case 'empty':
      res.writeHead(status, withLength(0))
      res.end()
      return
    case 'unsized': {
      // Without a content-length header Node sends the body chunked.
      const { 'content-length': _, ...rest } = headers
      res.writeHead(status, rest)
      res.end(fault.afterBytes === undefined ? body : body.subarray(0, cutAt(fault.afterBytes)))
      return
    }
    case 'long':
      res.writeHead(status, withLength(Math.max(0, body.length - 1)))
      res.end(body)
      return
    case 'slow': {
      res.writeHead(status, withLength(body.length))
      let offset = 0
      const step = () => {
        if (res.destroyed) return
        const next = Math.min(offset + fault.chunkBytes, body.length)
        const chunk = body.subarray(offset, next)
        offset = next
        if (offset >= body.length) {
          res.end(chunk)
          return
        }
        res.write(chunk)
        timers.after(fault.delayMs, step)
      }
      step()
      return
    }
  }
}
