// The blob response: written straight to Node's response (c.env.outgoing), the one path where
// the cost of converting to web streams shows in throughput (shared/reference/performance.md).
// Whatever the answer holds (an eviction pin, a file handle, a fill reader) is let go however
// the client leaves.

import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response'
import type { Context } from 'hono'
import type { BlobAnswer } from '../mirror/answers.js'
import type { Fill } from '../mirror/blob-fill.js'
import type { Mirror } from '../mirror/mirror.js'
import { hostOfHeader, sameOrSubdomain } from '../redirect-scope.js'
import { PEER, type RegistryEnv } from './access.js'
import { CACHE_HEADER, noteOf } from './outcome.js'
import { type ByteRange, parseRange, type RepoName } from './reference.js'
import { sendBytes } from './send-bytes.js'

/** If-None-Match names this digest: the client has these bytes (content-addressed, never stale). */
export function matchesEtag(header: string | undefined, digest: string): boolean {
  if (!header) return false
  return header.split(',').some((t) => t.trim().replace(/^W\//, '').replace(/"/g, '') === digest)
}

/** Answers a blob GET or HEAD; `digest` is parsed and the client may read it under `name`. */
export async function blob(
  c: Context<RegistryEnv>,
  mirror: Mirror,
  name: RepoName,
  digest: string,
  method: 'GET' | 'HEAD',
) {
  const res = c.env.outgoing
  const note = noteOf(res)
  note.kind = 'blob'
  note.name = name
  note.digest = digest
  // The client may leave during any await below. The close listener comes before the first
  // one, so whatever this response has taken (an eviction pin, a file handle) is let go however
  // early the client goes; after each await the response checks whether it is still wanted.
  let answer: BlobAnswer | undefined
  let closed = false
  let streaming = false
  let settled = false
  let sent = () => 0
  const settle = () => {
    if (settled || answer === undefined) return
    settled = true
    if (answer.kind === 'file') {
      // Once streaming, the sender closes the handle when it is done with it.
      if (!streaming) void answer.handle.close().catch(() => {})
      answer.release()
    }
  }
  res.once('close', () => {
    closed = true
    settle()
  })

  let found = await mirror.blob(name, digest, method, {
    offload: method === 'GET' && mayRedirect(c, mirror.redirectHost, digest),
  })
  if (found.kind === 'fill' && found.fill.size === undefined && !closed) {
    // An upstream that sent no Content-Length: the size is known only once the fill is done.
    // The stored file is opened under a pin, so even a budget smaller than the blob cannot
    // evict it before this response has it.
    found = await mirror.storedWhenDone(found.fill, found.cache)
  }
  answer = found
  note.cache = found.cache
  if (closed) {
    settle()
    return RESPONSE_ALREADY_SENT
  }
  if (found.kind === 'redirect') {
    // The bytes come from the bucket: nothing is sent here but the way there.
    res.writeHead(307, {
      Location: found.url,
      'Docker-Content-Digest': digest,
      // The URL expires: a cache must not keep it longer than the client takes to follow it.
      'Cache-Control': 'no-store',
      'Content-Length': 0,
      [CACHE_HEADER]: found.cache,
    })
    res.end()
    return RESPONSE_ALREADY_SENT
  }
  // From here on the body, if any, is written here: what went out is what was counted.
  note.bytes = () => sent()

  const size = found.kind === 'fill' ? found.fill.size! : found.size
  const headers: Record<string, string | number> = {
    'Content-Type': 'application/octet-stream',
    'Docker-Content-Digest': digest,
    ETag: `"${digest}"`,
    'Accept-Ranges': 'bytes',
    // Content-addressed: the bytes behind this URL can never change.
    'Cache-Control': 'max-age=31536000',
    [CACHE_HEADER]: found.cache,
  }
  if (matchesEtag(c.req.header('if-none-match'), digest)) {
    res.writeHead(304, { ETag: headers.ETag!, [CACHE_HEADER]: found.cache })
    res.end()
    return RESPONSE_ALREADY_SENT
  }
  const range: ByteRange | undefined = parseRange(c.req.header('range'), size)
  const start = range?.start ?? 0
  const end = range?.end ?? size - 1
  headers['Content-Length'] = size === 0 ? 0 : end - start + 1
  if (range) headers['Content-Range'] = `bytes ${start}-${end}/${size}`
  res.writeHead(range ? 206 : 200, headers)
  if (method === 'HEAD' || found.kind === 'remote' || size === 0) {
    res.end()
    return RESPONSE_ALREADY_SENT
  }

  streaming = true
  let bytes = 0
  sent = () => bytes
  const count = (n: number) => {
    bytes += n
  }
  if (found.kind === 'file') {
    const handle = found.handle
    void sendBytes(
      res,
      {
        read: async (buffer, length, position) => (await handle.read(buffer, 0, length, position)).bytesRead,
      },
      start,
      end,
      count,
    ).finally(() => handle.close().catch(() => {}))
  } else {
    const fill = found.fill
    const reader = fill.reader(end)
    void sendBytes(
      res,
      { read: reader.read, ready: (position) => written(fill, position) },
      start,
      end,
      count,
    ).finally(reader.release)
  }
  return RESPONSE_ALREADY_SENT
}

/**
 * Whether this GET may be sent to the bucket (`bucketHost`: where, with redirects on). Not when
 * the client already has the bytes (a 304 answers it here), nor when it carries credentials and
 * would carry them on to the bucket's host (src/redirect-scope.ts), nor for another node of the
 * cluster. A Range GET may go: the presigned URL answers ranges itself.
 */
function mayRedirect(c: Context<RegistryEnv>, bucketHost: string | undefined, digest: string): boolean {
  if (bucketHost === undefined) return false
  // A node of the cluster relays the bytes to its own client, and its request carries the
  // cluster secret, which must not follow it anywhere.
  if (c.get('viewer') === PEER) return false
  if (matchesEtag(c.req.header('if-none-match'), digest)) return false
  if (c.req.header('authorization') === undefined) return true
  const host = hostOfHeader(c.req.header('host'))
  return host !== undefined && !sameOrSubdomain(bucketHost, host)
}

/** Resolves once the fill has bytes at `position` on disk, or has ended either way. */
async function written(fill: Fill, position: number): Promise<void> {
  while (fill.state === 'streaming' && fill.written <= position) await fill.changed()
}
