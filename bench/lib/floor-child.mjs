// One measurement of bench/floors.mjs, in a process of its own (so each is measured alone, under
// the node binary and flags floors.mjs chose). Prints one JSON line.
//
//   floor-child.mjs read MODE URL SIZE   two warm-up GETs, then three measured GETs of URL's SIZE bytes:
//                                        MODE net (a raw socket, HTTP/1.1 by hand, nothing parsed:
//                                        the least node can do to take bytes in), http (node's own
//                                        client), undici (request() and the body's async iterator,
//                                        as the fill took a blob in), undici-data (request() and
//                                        the body's 'data' events), undici-dispatch (a dispatch
//                                        handler: chunks straight to the hash, no Readable); each
//                                        hashed with sha256, or undici-nohash; prints cpu (s, all threads), wall (s), bytes
//                                        of each (warm: a long-running mirror's JIT and heap are)
//   floor-child.mjs hash FILE            sha256 over the file's bytes in memory, 1 MiB at a time,
//                                        three times after one unmeasured pass (the file is read
//                                        first, not measured)
//   floor-child.mjs touch SIZE           writes SIZE bytes of memory never touched before, then the
//                                        same bytes again: what a page fault costs this machine
//                                        (each line names its measure in `as`)
//   floor-child.mjs rss MODULE...        imports the modules (better-sqlite3 also opens a database,
//                                        which loads its addon), waits 1 s, prints VmRSS in bytes
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'

const [what, ...args] = process.argv.slice(2)
const print = (o) => process.stdout.write(`${JSON.stringify(o)}\n`)
const cpuNow = () => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

async function timed(work) {
  const c0 = cpuNow()
  const t0 = performance.now()
  const bytes = await work()
  return { cpu: cpuNow() - c0, wall: (performance.now() - t0) / 1000, bytes }
}

/** Hashes what `stream` emits, in flowing mode; resolves with the byte count at its end. */
function hashStream(stream) {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256')
    let n = 0
    stream.on('data', (chunk) => {
      hash.update(chunk)
      n += chunk.length
    })
    stream.on('end', () => {
      hash.digest()
      resolve(n)
    })
    stream.on('error', reject)
  })
}

/** The whole response over a raw socket (status line and headers included), hashed. */
function rawGet(url) {
  const u = new URL(url)
  const socket = net.connect(Number(u.port), u.hostname)
  socket.write(`GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nConnection: close\r\n\r\n`)
  return hashStream(socket)
}

/** The body through node's own http client, hashed. */
function httpGet(url, agent) {
  return new Promise((resolve, reject) => {
    http.get(url, { agent }, (res) => hashStream(res).then(resolve, reject)).on('error', reject)
  })
}

async function read(mode, url, size) {
  let get
  let close = async () => {}
  if (mode === 'net') get = () => rawGet(url)
  else if (mode === 'http') {
    const agent = new http.Agent({ keepAlive: true })
    get = () => httpGet(url, agent)
    close = async () => agent.destroy()
  } else if (mode === 'undici' || mode === 'undici-nohash' || mode === 'undici-data') {
    const { Agent, request } = await import('undici')
    const agent = new Agent()
    const hashing = mode !== 'undici-nohash'
    get = async () => {
      const res = await request(url, { dispatcher: agent })
      if (mode === 'undici-data') return hashStream(res.body)
      const hash = createHash('sha256')
      let n = 0
      for await (const chunk of res.body) {
        if (hashing) hash.update(chunk)
        n += chunk.length
      }
      hash.digest()
      return n
    }
    close = () => agent.close()
  } else if (mode === 'undici-dispatch') {
    const { Agent } = await import('undici')
    const agent = new Agent()
    const u = new URL(url)
    get = () =>
      new Promise((resolve, reject) => {
        const hash = createHash('sha256')
        let n = 0
        agent.dispatch(
          { origin: u.origin, path: u.pathname, method: 'GET' },
          {
            // undici tells its newer handler interface by these two, which have nothing to do here.
            onRequestStart() {},
            onResponseStart() {},
            onResponseData(_controller, chunk) {
              hash.update(chunk)
              n += chunk.length
            },
            onResponseEnd() {
              hash.digest()
              resolve(n)
            },
            onResponseError(_controller, error) {
              reject(error)
            },
          },
        )
      })
    close = () => agent.close()
  } else throw new Error(`floor-child: unknown mode ${mode}`)
  for (let i = 0; i < 2; i++) await get()
  for (let i = 0; i < 3; i++) {
    const got = await timed(get)
    if (got.bytes < size) throw new Error(`floor-child: ${mode} read ${got.bytes} of ${size} bytes`)
    print(got)
  }
  await close()
}

if (what === 'read') await read(args[0], args[1], Number(args[2]))
else if (what === 'hash') {
  const bytes = readFileSync(args[0])
  const MiB = 1024 * 1024
  const hashAll = () => {
    const hash = createHash('sha256')
    for (let at = 0; at < bytes.length; at += MiB) hash.update(bytes.subarray(at, at + MiB))
    hash.digest()
    return bytes.length
  }
  hashAll()
  for (let i = 0; i < 3; i++) print(await timed(hashAll))
} else if (what === 'touch') {
  const buffer = Buffer.allocUnsafeSlow(Number(args[0]))
  print({ ...(await timed(async () => buffer.fill(1).length)), as: 'first touch of fresh memory' })
  print({ ...(await timed(async () => buffer.fill(2).length)), as: 'the same memory written again' })
} else if (what === 'rss') {
  for (const name of args) {
    const module = await import(name)
    // The native addon loads with the first database, as it does when serve opens its index.
    if (name === 'better-sqlite3') new module.default(':memory:').close()
  }
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1])
  print({ rss: kb * 1024 })
} else throw new Error(`floor-child: unknown measurement ${what}`)
