// Bounded polling, the one way tests wait for something that happens elsewhere (a log line, a file,
// a daemon's socket). Every wait has a deadline and names what it waited for, so a hang fails with
// a message instead of stalling the run.

import { setTimeout as sleep } from 'node:timers/promises'

export type WaitOptions = { timeoutMs?: number; intervalMs?: number; what: string }

/**
 * Polls `probe` until it returns something other than undefined or false, and returns that. A probe
 * that throws is tried again; the last error is the cause of the timeout.
 */
export async function waitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  options: WaitOptions,
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 5_000
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await probe()
      if (value !== undefined && value !== false) return value
    } catch (error) {
      lastError = error
    }
    if (Date.now() >= deadline) break
    await sleep(options.intervalMs ?? 25)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${options.what}`, { cause: lastError })
}
