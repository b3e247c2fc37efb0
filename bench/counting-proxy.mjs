// A plain reverse proxy in front of the bench's upstream registry that counts every request a
// mirror makes upstream. One instance per mirror, so each mirror's upstream traffic is counted
// apart. Bodies are streamed, never buffered. Optionally the bodies it passes on are throttled to
// a shared rate (a stand-in for an internet link), see --rate.
//
// With --redirect-blobs, a blob GET is counted and answered with a 307 to the registry's own URL
// for it, the way Docker Hub hands blob bodies to its CDN: the bytes then go from the registry
// to the mirror without this proxy (a Node process) spending CPU on them beside the mirror. Not
// while a rate is set: the throttle has to carry the bytes.
//
//   node bench/counting-proxy.mjs --target http://127.0.0.1:PORT [--listen 127.0.0.1:0] [--rate MBps] [--redirect-blobs]
//
// Prints one JSON line {"event":"listening","url":...} once it listens. Its own endpoints:
//   GET  /_bench/counts   {"total":N,"byKind":{"blob GET":N,"manifest HEAD":N,...},"bytes":N,"open":N}
//                         (open: forwarded requests whose response has not finished)
//   POST /_bench/reset    zeroes the counts
//   POST /_bench/rate?mbps=N   sets the throttle (0: none)
import { Agent, createServer, request } from 'node:http'

const argv = process.argv.slice(2)
const redirectBlobs = argv.includes('--redirect-blobs')
const args = new Map()
const valued = argv.filter((a) => a !== '--redirect-blobs')
for (let i = 0; i < valued.length; i += 2) args.set(valued[i], valued[i + 1])
const target = args.get('--target')
if (!target) {
  process.stderr.write('usage: counting-proxy.mjs --target URL [--listen HOST:PORT] [--rate MBps]\n')
  process.exit(2)
}
const [listenHost, listenPort] = (args.get('--listen') ?? '127.0.0.1:0').split(':')
let rateBytesPerSec = Number(args.get('--rate') ?? 0) * 1e6

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
])

let counts = new Map()
let bytes = 0
/** Requests forwarded whose response has not finished yet. */
let open = 0
const agent = new Agent({ keepAlive: true, maxSockets: 128 })

// A shared token bucket: every response body through this proxy draws from it. `nextFree` is
// when the bytes passed so far have gone out at the rate. An idle spell buys at most BURST_S of
// credit (a link sends no faster after one; a little credit makes up for timers that fire late).
const BURST_S = 0.01
let nextFree = 0
/** Milliseconds to wait before `n` more bytes fit the rate, 0 if they fit now. */
function throttleDelay(n) {
  if (rateBytesPerSec <= 0) return 0
  const now = Number(process.hrtime.bigint()) / 1e9
  nextFree = Math.max(nextFree, now - BURST_S) + n / rateBytesPerSec
  return Math.max(0, (nextFree - now) * 1000)
}

function kindOf(path) {
  if (path === '/v2/' || path === '/v2') return 'ping'
  const m = /^\/v2\/.+\/(manifests|blobs)\/[^/]+$/.exec(path)
  if (m) return m[1] === 'blobs' ? 'blob' : 'manifest'
  if (/^\/v2\/.+\/tags\/list$/.test(path)) return 'tags'
  return 'other'
}

function control(req, res, path) {
  if (path === '/_bench/counts') {
    const byKind = Object.fromEntries([...counts.entries()].sort())
    const total = [...counts.values()].reduce((a, b) => a + b, 0)
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ total, byKind, bytes, open }))
    return
  }
  if (path === '/_bench/reset') {
    counts = new Map()
    bytes = 0
    res.writeHead(204).end()
    return
  }
  if (path === '/_bench/rate') {
    const mbps = Number(new URL(req.url, 'http://x').searchParams.get('mbps') ?? 0)
    rateBytesPerSec = mbps * 1e6
    nextFree = 0
    res.writeHead(204).end()
    return
  }
  res.writeHead(404).end()
}

const server = createServer((req, res) => {
  const rawUrl = req.url ?? '/'
  const q = rawUrl.indexOf('?')
  const path = q < 0 ? rawUrl : rawUrl.slice(0, q)
  if (path.startsWith('/_bench/')) {
    control(req, res, path)
    return
  }
  const kind = kindOf(path)
  const key = `${kind} ${req.method}`
  counts.set(key, (counts.get(key) ?? 0) + 1)
  if (redirectBlobs && rateBytesPerSec <= 0 && kind === 'blob' && req.method === 'GET') {
    res.writeHead(307, { location: new URL(rawUrl, target).href, 'content-length': 0 }).end()
    req.resume()
    return
  }
  open++
  res.once('close', () => {
    open--
  })

  const headers = {}
  for (const [name, value] of Object.entries(req.headers)) {
    if (!HOP_BY_HOP.has(name) && value !== undefined) headers[name] = value
  }
  const upstream = request(new URL(rawUrl, target), { method: req.method, headers, agent })
  res.on('close', () => {
    if (!res.writableFinished) upstream.destroy()
  })
  upstream.on('response', (upRes) => {
    const out = {}
    for (const [name, value] of Object.entries(upRes.headers)) {
      if (!HOP_BY_HOP.has(name) && value !== undefined) out[name] = value
    }
    res.writeHead(upRes.statusCode ?? 502, out)
    // Paused while the client is slow (drain) or the throttle says wait; resumed when neither holds.
    let holds = 0
    const hold = () => {
      if (holds++ === 0) upRes.pause()
    }
    const release = () => {
      if (--holds === 0) upRes.resume()
    }
    upRes.on('data', (chunk) => {
      bytes += chunk.length
      if (!res.write(chunk)) {
        hold()
        res.once('drain', release)
      }
      const wait = throttleDelay(chunk.length)
      if (wait > 0) {
        hold()
        setTimeout(release, wait)
      }
    })
    upRes.on('end', () => res.end())
    upRes.on('error', (err) => res.destroy(err))
  })
  upstream.on('error', (err) => {
    if (res.headersSent) {
      res.destroy(err)
      return
    }
    res
      .writeHead(502, { 'content-type': 'application/json' })
      .end(JSON.stringify({ errors: [{ code: 'UNKNOWN', message: `counting proxy: ${err.message}` }] }))
  })
  req.pipe(upstream)
})
server.keepAliveTimeout = 65_000
server.listen(Number(listenPort), listenHost, () => {
  const { port } = server.address()
  process.stdout.write(`${JSON.stringify({ event: 'listening', url: `http://${listenHost}:${port}` })}\n`)
})
const stop = () => {
  server.close()
  server.closeAllConnections()
  agent.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
