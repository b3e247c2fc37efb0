// What one client may hold of the server, and for how long, and the answer to requests Node's
// HTTP parser refuses before any route sees them. Each client is on one of these clocks:
//
//   connect ──▶ request head ──▶ handler (waits on upstream) ──▶ response bytes ──▶ idle ──▶ …
//               header_timeout    no deadline here: bounded by     send_timeout:     keepalive_timeout
//               (Node's headers-  upstream's own timeouts          only while bytes
//               Timeout, checked  (upstream.header_timeout,        sit queued that
//               every tick)       upstream.idle_timeout)           the client takes
//                                                                  none of
//
// A response waiting for a fill that upstream is slow to feed has nothing queued, so it is not
// on the send clock: a slow upstream is never mistaken for a dead client. max_connections caps
// the sockets (each may also hold a blob file handle and the buffers of its response).

import {
  createServer,
  type Server as HttpServer,
  type IncomingMessage,
  type RequestListener,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http'
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https'
import type { Socket } from 'node:net'
import type { TlsOptions } from 'node:tls'
import { RegistryError } from '../errors.js'
import type { Logger } from '../log.js'

export interface Limits {
  /** The whole request head must arrive within this, from the connection or the first byte. */
  header_timeout: number
  /** A response whose client takes none of its queued bytes for this long is cut. */
  send_timeout: number
  /** An idle keep-alive connection is closed after this. */
  keepalive_timeout: number
  /** Connections beyond this are closed as soon as they are accepted. */
  max_connections: number
}

/** How often the deadlines are checked: often enough that a test's deadline of 1 s holds. */
function tickFor(limits: Limits): number {
  return Math.max(20, Math.min(1000, Math.floor(Math.min(limits.header_timeout, limits.send_timeout) / 10)))
}

export type Server = HttpServer | HttpsServer

/**
 * An HTTP server with the limits in place, whose parse errors are answered with an OCI error;
 * with `tls`, an HTTPS server (HTTP/1.1) under the same limits. It is not listening yet.
 */
export function createLimitedServer(
  limits: Limits,
  log: Logger,
  handler: RequestListener,
  tls?: TlsOptions,
): Server {
  const options = {
    // Node checks the head deadline on its own timer; by default only every 30 s.
    connectionsCheckingInterval: tickFor(limits),
    headersTimeout: limits.header_timeout,
    // Counted only until the request is read (not while answering): a read-only registry
    // takes no bodies, so the head's deadline also serves for the whole request.
    requestTimeout: limits.header_timeout,
    keepAliveTimeout: limits.keepalive_timeout,
    // A request without Host reaches the routes, which answer it with an OCI error
    // (requestError); Node's own check would send a bare 400.
    requireHostHeader: false,
  }
  const server =
    tls === undefined
      ? createServer(options, handler)
      : // A handshake is on the head's clock too: a client that never finishes one holds nothing.
        createHttpsServer({ ...options, ...tls, handshakeTimeout: limits.header_timeout }, handler)
  server.maxConnections = limits.max_connections
  hardenServer(server, limits, log, tls !== undefined)
  return server
}

function hardenServer(server: Server, limits: Limits, log: Logger, secure: boolean): void {
  // Responses each socket has under way. A parse error behind pipelined requests is answered
  // after their answers, in order; one on a socket whose answer has gone wrong is not answered.
  const busy = new WeakMap<Socket, number>()
  const deferred = new WeakMap<Socket, () => void>()
  // A pipelined response still queued behind another has no socket yet, and Node never closes
  // it when the connection goes: it is closed here, so what it holds is let go (app.ts blob()).
  const queued = new WeakMap<Socket, Set<ServerResponse>>()
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket
    busy.set(socket, (busy.get(socket) ?? 0) + 1)
    let open = queued.get(socket)
    if (open === undefined) {
      const responses = new Set<ServerResponse>()
      queued.set(socket, responses)
      socket.once('close', () => {
        for (const r of responses) if (!r.closed) r.destroy().emit('close')
      })
      open = responses
    }
    open.add(res)
    res.once('close', () => {
      open.delete(res)
      const left = (busy.get(socket) ?? 1) - 1
      busy.set(socket, left)
      if (!res.writableFinished) socket.destroy()
      else if (left === 0) deferred.get(socket)?.()
    })
  })
  /** Writes `error` as the last answer on `socket`, once the answers before it are out. */
  const answerLast = (socket: Socket, error: RegistryError) => {
    const answer = () => {
      deferred.delete(socket)
      if (socket.destroyed || !socket.writable) return
      socket.end(errorMessage(error))
      // A client that reads nothing of the answer does not keep the socket.
      const timer = setTimeout(() => socket.destroy(), tickFor(limits) * 10)
      timer.unref()
      socket.once('close', () => clearTimeout(timer))
    }
    if ((busy.get(socket) ?? 0) > 0) deferred.set(socket, answer)
    else answer()
  }
  server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Socket) => {
    log.debug('http.client_error', { code: err.code ?? null, remote: socket.remoteAddress ?? null })
    if (err.code === 'ECONNRESET' || !socket.writable) socket.destroy()
    else answerLast(socket, clientErrorAnswer(err))
  })
  // CONNECT (a proxy's method) never reaches the routes: Node would drop the socket unanswered.
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    answerLast(
      socket,
      new RegistryError(
        'UNSUPPORTED',
        { method: 'CONNECT', reason: 'pullcache is a registry, not a proxy' },
        { headers: { Allow: 'GET, HEAD' } },
      ),
    )
  })

  // Past the cap Node closes the new connection at once; idle keep-alive connections are then
  // closed too, so the clients that retry find room.
  let dropped = 0
  let lastWarn = 0
  server.on('drop', () => {
    dropped++
    server.closeIdleConnections()
    const now = Date.now()
    if (now - lastWarn >= 10_000) {
      log.warn('http.connections_capped', { max_connections: limits.max_connections, dropped })
      lastWarn = now
      dropped = 0
    }
  })

  if (secure) {
    // A failed handshake (a client that does not trust the certificate, one without the client
    // certificate 'require' asks for, a scanner) never reaches HTTP; Node closes the socket.
    server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      log.debug('tls.handshake_failed', {
        code: err.code ?? null,
        reason: err.message,
        remote: socket.remoteAddress ?? null,
      })
    })
  }
  // The sockets whose queued bytes the send clock watches: with TLS, the TLS socket (its
  // encrypted stream takes over the TCP socket's handle, whose own counters stay still).
  const sockets = new Set<Socket>()
  server.on(secure ? 'secureConnection' : 'connection', (socket: Socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  const sends = new WeakMap<Socket, { mark: string; since: number }>()
  const tick = tickFor(limits)
  let lastSweep = Date.now()
  const sweeper = setInterval(() => {
    const now = Date.now()
    // After a stall of this process (a long GC, a slow disk) clients had no chance to read:
    // what they took during it does not show yet, so every clock starts again.
    const stalled = now - lastSweep > 2 * tick
    lastSweep = now
    for (const socket of sockets) {
      if (socket.destroyed || socket.writableLength === 0) {
        sends.delete(socket)
        continue
      }
      // Bytes are queued: the client has taken none of them unless one of these moved. The
      // handle's write queue also moves when the kernel takes part of a large write.
      const queue = (socket as unknown as { _handle?: { writeQueueSize?: number } })._handle?.writeQueueSize
      const mark = `${socket.bytesWritten}:${socket.writableLength}:${queue ?? ''}`
      const seen = sends.get(socket)
      if (seen === undefined || seen.mark !== mark || stalled) {
        sends.set(socket, { mark, since: now })
      } else if (now - seen.since >= limits.send_timeout) {
        log.info('http.send_timeout', {
          remote: socket.remoteAddress ?? null,
          queued_bytes: socket.writableLength,
          send_timeout_ms: limits.send_timeout,
        })
        socket.destroy()
      }
    }
  }, tick)
  sweeper.unref()
  server.once('close', () => clearInterval(sweeper))
}

/** A whole HTTP/1.1 message, written straight to a socket no response object owns. */
function errorMessage(error: RegistryError): string {
  const body = error.body()
  const head = [
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? 'Error'}`,
    'Content-Type: application/json',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
    'Docker-Distribution-API-Version: registry/2.0',
    ...Object.entries(error.headers).map(([k, v]) => `${k}: ${v}`),
  ]
  return `${head.join('\r\n')}\r\n\r\n${body}`
}

/** The OCI error for what Node's parser refused (or timed out on) before any route ran. */
function clientErrorAnswer(err: NodeJS.ErrnoException & { rawPacket?: Buffer }): RegistryError {
  const detail = { reason: err.code ?? err.message }
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return new RegistryError('HEADERS_TOO_LARGE', detail)
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new RegistryError('REQUEST_TIMEOUT', detail)
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return new RegistryError('REQUEST_TOO_LARGE', detail, { message: 'chunk extensions too large' })
    case 'HPE_INVALID_METHOD': {
      // A method name Node does not know ("FOO / HTTP/1.1"): answered like PUT or DELETE.
      // rawPacket is all the parser was given; the refused request starts after the last
      // complete head before the point of error.
      const raw = err.rawPacket ?? Buffer.alloc(0)
      const parsed = (err as { bytesParsed?: number }).bytesParsed ?? 0
      const lastHead = raw.subarray(0, parsed).lastIndexOf('\r\n\r\n')
      const from = lastHead === -1 ? 0 : lastHead + 4
      const start = raw.toString('latin1', from, from + 64)
      if (/^[!#$%&'*+.^_`|~0-9A-Za-z-]+ /.test(start)) {
        return new RegistryError(
          'UNSUPPORTED',
          { ...detail, method: start.slice(0, start.indexOf(' ')) },
          { headers: { Allow: 'GET, HEAD' } },
        )
      }
      break
    }
  }
  return new RegistryError('REQUEST_INVALID', detail)
}

/**
 * The answer to a request the routes cannot even be given: no Host header, a Host that is not
 * a host, a request target that is not a path. Connection: close, as after a parse error.
 */
export function requestError(err: unknown): Response {
  const error = new RegistryError('REQUEST_INVALID', {
    reason: err instanceof Error ? err.message : String(err),
  })
  const body = error.body()
  return new Response(body, {
    status: error.status,
    headers: {
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(body)),
      Connection: 'close',
    },
  })
}
