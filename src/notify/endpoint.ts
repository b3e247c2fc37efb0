// One webhook endpoint: a bounded queue of events and one sender that POSTs them in small
// batches, one request at a time. Adding an event is synchronous and never waits: a pull must
// not slow down because a receiver is slow or down. When the queue is full the oldest event
// goes (counted as dropped). A batch that fails (no answer, a timeout, 5xx, 408 or 429) is
// retried after a backoff that doubles with each failure, with jitter, and given up after
// max_attempts (counted as failed); any other answer is final. Best effort: events in memory
// are lost with the process, and a batch whose answer was lost may arrive twice.
//
// The POST goes to the configured URL only: node:http never follows a redirect, and a 3xx is a
// final failure. Header values (tokens) are sent, never logged.

import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import type { Logger } from '../log.js'
import { EVENTS_MEDIA_TYPE, type EventFilter, type NotifyEvent, wanted } from './events.js'

export interface EndpointConfig extends EventFilter {
  name: string
  url: string
  headers: Readonly<Record<string, string>>
  timeout: number
  backoff: number
  max_attempts: number
  queue: number
}

/** Counts per endpoint, in events; the server points these at Prometheus counters. */
export interface EndpointCounters {
  sent(endpoint: string, n: number): void
  failed(endpoint: string, n: number): void
  dropped(endpoint: string, n: number): void
}

/** Events per POST. */
export const BATCH = 10
/** The longest wait between two tries. */
const MAX_BACKOFF_MS = 60_000

/** The wait before try `attempt + 1`: backoff * 2^(attempt-1), capped, from half to all of it. */
export function backoffDelay(backoffMs: number, attempt: number, random: () => number = Math.random): number {
  const full = Math.min(MAX_BACKOFF_MS, backoffMs * 2 ** Math.max(0, attempt - 1))
  return Math.round(full / 2 + (full / 2) * random())
}

/** The configured headers, less those that describe the body: the envelope sets its own. */
function ownHeaders(headers: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !BODY_HEADERS.has(name.toLowerCase())))
}
const BODY_HEADERS = new Set(['content-type', 'content-length', 'transfer-encoding'])

/** Whether an answer with this status is worth another try. */
function retryable(status: number): boolean {
  return status >= 500 || status === 408 || status === 429
}

export class Endpoint {
  readonly config: EndpointConfig
  private readonly queue: NotifyEvent[] = []
  private readonly log: Logger
  private readonly counters: EndpointCounters
  private readonly agent: HttpAgent
  private sending: Promise<void> | undefined
  private closing = false
  /** Wakes the sender from a backoff wait (on close). */
  private wake: (() => void) | undefined
  /** Aborts the POST in flight (on close, past the deadline). */
  private inflight: AbortController | undefined

  constructor(config: EndpointConfig, log: Logger, counters: EndpointCounters) {
    this.config = config
    this.log = log
    this.counters = counters
    const Agent = config.url.startsWith('https:') ? HttpsAgent : HttpAgent
    this.agent = new Agent({ keepAlive: true, maxSockets: 1 })
  }

  get pending(): number {
    return this.queue.length
  }

  /** Queues the event if this endpoint wants it; never waits. */
  add(event: NotifyEvent): void {
    if (this.closing || !wanted(this.config, event)) return
    this.queue.push(event)
    if (this.queue.length > this.config.queue) {
      this.queue.shift()
      this.counters.dropped(this.config.name, 1)
    }
    this.kick()
  }

  /**
   * Starts the sender unless it runs; on the next turn, so the caller (a response's close) never
   * runs it. When it ends with events queued in its last moments, it starts again.
   */
  private kick(): void {
    if (this.sending !== undefined) return
    this.sending = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.drain())
      .finally(() => {
        this.sending = undefined
        if (this.queue.length > 0 && !this.closing) this.kick()
      })
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, BATCH)
      await this.deliver(batch)
    }
  }

  /** Sends one batch, retrying as configured; counts it sent or failed. */
  private async deliver(batch: NotifyEvent[]): Promise<void> {
    const body = JSON.stringify({ events: batch })
    const { name, max_attempts } = this.config
    for (let attempt = 1; ; attempt++) {
      const result = await this.post(body)
      if (result.ok) {
        this.counters.sent(name, batch.length)
        return
      }
      // Closing: one try each, no waits; what is left is given up.
      const last = attempt >= max_attempts || !result.retry || this.closing
      this.log.warn('notify.send_failed', {
        endpoint: name,
        events: batch.length,
        attempt,
        error: result.error,
        ...(last ? { given_up: true } : {}),
      })
      if (last) {
        this.counters.failed(name, batch.length)
        return
      }
      await this.sleep(backoffDelay(this.config.backoff, attempt))
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms)
      timer.unref()
      function done() {
        clearTimeout(timer)
        resolve()
      }
      this.wake = done
    }).finally(() => {
      this.wake = undefined
    })
  }

  private post(body: string): Promise<{ ok: true } | { ok: false; retry: boolean; error: string }> {
    const { url, headers, timeout } = this.config
    const abort = new AbortController()
    this.inflight = abort
    const request = url.startsWith('https:') ? httpsRequest : httpRequest
    return new Promise<{ ok: true } | { ok: false; retry: boolean; error: string }>((resolve) => {
      const timer = setTimeout(() => abort.abort(new Error(`no answer within ${timeout}ms`)), timeout)
      timer.unref()
      const settle = (value: { ok: true } | { ok: false; retry: boolean; error: string }) => {
        clearTimeout(timer)
        resolve(value)
      }
      const req = request(
        url,
        {
          method: 'POST',
          agent: this.agent,
          signal: abort.signal,
          headers: {
            ...ownHeaders(headers),
            'Content-Type': EVENTS_MEDIA_TYPE,
            'Content-Length': Buffer.byteLength(body),
          },
        },
        (res: IncomingMessage) => {
          const status = res.statusCode ?? 0
          // Read to the end, so the connection can carry the next batch.
          res.resume()
          res.once('end', () => {
            if (status >= 200 && status < 300) settle({ ok: true })
            else settle({ ok: false, retry: retryable(status), error: `HTTP ${status}` })
          })
          res.once('error', (err) => settle({ ok: false, retry: true, error: err.message }))
        },
      )
      req.once('error', (err) => {
        const reason = abort.signal.aborted ? (abort.signal.reason as Error).message : err.message
        settle({ ok: false, retry: true, error: reason })
      })
      req.end(body)
    }).finally(() => {
      if (this.inflight === abort) this.inflight = undefined
    })
  }

  /**
   * Stops taking events and sends what is queued, one try per batch with no waits, for up to
   * `deadlineMs`; then aborts and counts whatever is left as failed.
   */
  async close(deadlineMs: number): Promise<void> {
    this.closing = true
    this.wake?.()
    const timer = setTimeout(() => {
      const left = this.queue.splice(0)
      if (left.length > 0) this.counters.failed(this.config.name, left.length)
      this.inflight?.abort(new Error('pullcache is stopping'))
    }, deadlineMs)
    timer.unref()
    await this.sending?.catch(() => undefined)
    clearTimeout(timer)
    this.agent.destroy()
  }
}
