// What an upstream answer says, and reading its body without trusting it. Every part of the
// client (token fetches, the registry API, pings, redirects) reads answers the same way: one
// header value, a body read whole only up to a limit (and dropped past it, so undici's
// connection is freed), upstream's own error message, and the failure kind a status means.
// Kept apart so the transport, the token exchange and the registry requests share one reading.

import type { IncomingHttpHeaders } from 'node:http'
import type { Dispatcher } from 'undici'
import { networkFailure, type UpstreamFailure } from '../errors.js'

export type Response = Dispatcher.ResponseData

/** Error bodies we read to report upstream's message; anything longer is cut. */
export const MAX_ERROR_BODY = 16 * 1024

export function isRedirect(status: number): boolean {
  return status === 301 || status === 302 || status === 303 || status === 307 || status === 308
}

export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

/**
 * How long ago upstream's answer was current, from its Age header (RFC 9110 §5.6.7 delta-seconds):
 * a central pullcache says how long ago it checked a tag. 0 when absent or not a number.
 */
export function ageOf(headers: IncomingHttpHeaders): number {
  const value = header(headers, 'age')
  return value !== undefined && /^\d{1,10}$/.test(value) ? Number(value) * 1000 : 0
}

export function mediaTypeOf(headers: IncomingHttpHeaders): string {
  // Parameters such as "; charset=utf-8" are not part of a manifest media type.
  return (header(headers, 'content-type') ?? '').split(';')[0]!.trim()
}

export function kindOfStatus(status: number): UpstreamFailure {
  if (status === 404) return 'NOT_FOUND'
  if (status === 401 || status === 403) return 'UNAUTHORIZED'
  if (status === 429) return 'RATE_LIMITED'
  return 'SERVER'
}

/** Reads a whole body, or returns undefined (and drops the rest) past `limit` bytes. */
export async function readLimited(res: Response, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = []
  let total = 0
  try {
    for await (const chunk of res.body) {
      total += (chunk as Buffer).length
      if (total > limit) {
        res.body.destroy()
        return undefined
      }
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    throw networkFailure(err)
  }
  return Buffer.concat(chunks)
}

export function upstreamMessage(bytes: Buffer): string | undefined {
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as { errors?: { code?: string; message?: string }[] }
    const first = parsed.errors?.[0]
    if (first) return [first.code, first.message].filter(Boolean).join(': ')
  } catch {
    // not JSON: say nothing rather than echo arbitrary upstream text
  }
  return undefined
}

/**
 * What a manifest answer's headers say: its digest, type and size, and how old the answer was
 * (a central pullcache's Age). For upstream's answers and a cluster owner's alike.
 */
export function manifestHeadOf(headers: IncomingHttpHeaders): {
  digest: string | undefined
  mediaType: string
  size: number | undefined
  ageMs: number
} {
  const length = header(headers, 'content-length')
  return {
    digest: header(headers, 'docker-content-digest'),
    mediaType: mediaTypeOf(headers),
    size: length === undefined ? undefined : Number(length),
    ageMs: ageOf(headers),
  }
}

/** A manifest's bytes with what the answer's headers say of them (manifestHeadOf, but the size). */
export function manifestBodyOf(
  headers: IncomingHttpHeaders,
  bytes: Buffer,
): { bytes: Buffer; digest: string | undefined; mediaType: string; ageMs: number } {
  const { digest, mediaType, ageMs } = manifestHeadOf(headers)
  return { bytes, digest, mediaType, ageMs }
}
