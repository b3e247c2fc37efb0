// Memory and file descriptors of pullcache under many clients that do not keep up: slow readers
// and connections that never read. Run from the repository root after `npm run build`:
//
//   node bench/clients.mjs [--size MiB] [--slow N] [--idle N] [--hold seconds] [--env K=V ...]
//                          [--bin path/to/main.js]   (another build, e.g. of an older commit)
//
//   a small upstream in this process serves one random blob of --size MiB (default 200);
//   pullcache (dist/main.js) runs as a child against it, and one GET puts the blob in its store;
//   then, one phase after the other, against the cached blob:
//     slow   N clients (default 200) each read one socket buffer every 250 ms
//     idle   N clients (default 400) send the request and never read a byte
//   Each phase holds its clients for --hold seconds (default 20), then closes them all. Printed:
//   pullcache's RSS before, its peak during the phase (VmHWM, reset before the phase, and VmRSS
//   sampled every 20 ms), its open file descriptors while the clients are held and 3 s after
//   they left, and how many of the clients pullcache itself had closed by the end of the hold.
//   --env passes settings to pullcache, e.g. --env PULLCACHE_SEND_TIMEOUT=10s.
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { writeRandomFile } from './lib/data.mjs'
import { peakRss, rssOf } from './lib/measure.mjs'
import { freePort, listeningLine, sleep, startDaemon } from './lib/procs.mjs'

const args = process.argv.slice(2)
const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`)
  return i === -1 ? fallback : Number(args[i + 1])
}
const sizeMiB = option('size', 200)
const slowCount = option('slow', 200)
const idleCount = option('idle', 400)
const holdMs = option('hold', 20) * 1000
const binIndex = args.indexOf('--bin')
const bin = binIndex === -1 ? 'dist/main.js' : args[binIndex + 1]
const extraEnv = {}
args.forEach((a, i) => {
  if (a !== '--env') return
  const [k, ...v] = args[i + 1].split('=')
  extraEnv[k] = v.join('=')
})

const work = mkdtempSync(join(tmpdir(), 'pullcache-clients-'))
const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(0)} MiB`
const fdsOf = (pid) => readdirSync(`/proc/${pid}/fd`).length

let upstream
let mirror
try {
  const blobPath = join(work, 'blob')
  const digest = writeRandomFile(blobPath, sizeMiB * 2 ** 20)
  const size = statSync(blobPath).size
  upstream = await startUpstream(blobPath, digest, size)

  const port = await freePort()
  mirror = await startDaemon('pullcache', process.execPath, [bin, 'serve'], {
    env: {
      ...process.env,
      PULLCACHE_LISTEN: `127.0.0.1:${port}`,
      PULLCACHE_DATA_DIR: join(work, 'data'),
      PULLCACHE_UPSTREAM: upstream.url,
      PULLCACHE_ACCESS_LOG: 'false',
      ...extraEnv,
    },
    logDir: work,
    ready: listeningLine,
  })
  console.log(`pullcache started: RSS ${mib(rssOf([mirror.pid]))}, ${fdsOf(mirror.pid)} fds`)
  const path = `/v2/library/big/blobs/${digest}`
  const warm = await fetch(`${mirror.ready}${path}`)
  const got = (await warm.arrayBuffer()).byteLength
  if (warm.status !== 200 || got !== size) throw new Error(`warm GET: ${warm.status}, ${got} bytes`)
  await sleep(1000)
  const baseFds = fdsOf(mirror.pid)
  console.log(`blob ${mib(size)} cached; pullcache RSS ${mib(rssOf([mirror.pid]))}, ${baseFds} fds`)

  for (const [phase, count] of [
    ['slow', slowCount],
    ['idle', idleCount],
  ]) {
    if (count === 0) continue
    const before = rssOf([mirror.pid])
    let clients = []
    let heldFds = 0
    const { peak } = await peakRss([mirror.pid], async () => {
      clients = await Promise.all(Array.from({ length: count }, () => client(port, path, phase)))
      await sleep(holdMs)
      heldFds = fdsOf(mirror.pid)
    })
    const closedByServer = clients.filter((c) => c.closed()).length
    for (const c of clients) c.destroy()
    await sleep(3000)
    console.log(
      `${phase}: ${count} clients, ${holdMs / 1000} s: RSS ${mib(before)} -> peak ${mib(peak)}, ` +
        `now ${mib(rssOf([mirror.pid]))}; fds ${heldFds} held, ${fdsOf(mirror.pid)} after (baseline ${baseFds}); ` +
        `closed by pullcache: ${closedByServer}; bytes read: ${mib(clients.reduce((a, c) => a + c.bytes(), 0))}`,
    )
  }
} finally {
  await mirror?.stop()
  await upstream?.close()
  rmSync(work, { recursive: true, force: true })
}

/** One client on its own connection: `slow` reads a little every 250 ms, `idle` never reads. */
function client(port, path, mode) {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
      socket.pause()
      resolve({
        closed: () => closed,
        bytes: () => bytes,
        destroy: () => {
          clearInterval(timer)
          socket.destroy()
        },
      })
    })
    let closed = false
    let bytes = 0
    let timer
    socket.on('error', () => {})
    socket.once('error', reject)
    socket.on('close', () => {
      closed = true
      clearInterval(timer)
    })
    if (mode === 'slow') {
      timer = setInterval(() => {
        for (let chunk = socket.read(); chunk !== null; chunk = socket.read()) bytes += chunk.length
      }, 250)
    }
  })
}

/** Serves the one blob at /v2/<any name>/blobs/<digest>, like a registry without auth. */
async function startUpstream(file, digest, size) {
  const { createReadStream } = await import('node:fs')
  const server = createServer((req, res) => {
    if (req.url === '/v2/' || req.url === '/v2') {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end('{}')
    } else if (req.url.endsWith(`/blobs/${digest}`)) {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': size })
      if (req.method === 'HEAD') res.end()
      else createReadStream(file, { highWaterMark: 1024 * 1024 }).pipe(res)
    } else {
      res.writeHead(404, { 'Content-Type': 'application/json' })
      res.end('{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown","detail":null}]}')
    }
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => {
      server.closeAllConnections()
      return new Promise((resolve) => server.close(resolve))
    },
  }
}
