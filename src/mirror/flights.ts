// Upstream exchanges under a deadline, one per key at a time. Every exchange the mirror starts
// has a deadline (upstream.header_timeout) for its answer, token and redirects included. A flight
// past its deadline is taken out of the single-flight map and aborted, and everyone waiting on
// it gets TIMEOUT at once: a request arriving later starts afresh and is never joined to a fetch
// that upstream has stopped answering. Blob fills keep their own map (blob-lookup.ts), since a
// fill outlives its first answer; they share the deadline's error.

import { UpstreamError } from '../errors.js'

export class Flights {
  private readonly flights = new Map<string, Promise<unknown>>()
  /** The deadline of one exchange (upstream.header_timeout). */
  private readonly timeoutMs: number

  constructor(timeoutMs: number) {
    this.timeoutMs = timeoutMs
  }

  /** Whether an exchange under this key is running now, so a request would join it. */
  has(key: string): boolean {
    return this.flights.has(key)
  }

  /**
   * One exchange per key at a time, under the upstream deadline: past it the key is free for
   * the next request, the exchange is aborted, and everyone who joined it gets TIMEOUT.
   */
  flight<T>(key: string, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const existing = this.flights.get(key)
    if (existing) return existing as Promise<T>
    const started = this.bounded(run).finally(() => {
      if (this.flights.get(key) === started) this.flights.delete(key)
    })
    this.flights.set(key, started)
    return started
  }

  /** Runs one upstream exchange; at the deadline it is aborted and the promise rejects at once. */
  bounded<T>(run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ms = this.timeoutMs
    const controller = new AbortController()
    let timer: NodeJS.Timeout | undefined
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err = timedOut(ms, 'upstream exchange')
        controller.abort(err)
        reject(err)
      }, ms)
    })
    const work = run(controller.signal)
    work.catch(() => {}) // past the deadline nobody waits on it; a late failure is not unhandled
    return Promise.race([work, expired]).finally(() => clearTimeout(timer))
  }
}

export function timedOut(ms: number, what: string): UpstreamError {
  return new UpstreamError('TIMEOUT', `upstream timed out: no answer for ${what} within ${ms} ms`)
}
