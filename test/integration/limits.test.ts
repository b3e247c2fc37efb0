// Deadlines and caps on what one client may hold, and the release of everything a blob response
// took however its client leaves. The limits are set small (about a second) so the tests are quick.
import { randomBytes } from 'node:crypto'
import { readdirSync, readlinkSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import { describe, expect, test, vi } from 'vitest'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'

const fake = useFakeUpstream({ auth: 'none' })
const REPO = 'library/limits'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
/**
 * Descriptors this process holds, less the index's own files: the server's checkpointer thread
 * opens its connection to the index when it gets to it, which is none of a client's doing.
 */
const openFds = () =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return !readlinkSync(`/proc/self/fd/${fd}`).includes('index.db')
    } catch {
      return false
    }
  }).length
/**
 * Open descriptors once the server's background work has settled: the checkpointer thread, which
 * starts with the index's first write (a cached blob's row) and opens descriptors of its own.
 */
async function settledFds(mirror: TestMirror): Promise<number> {
  await until(() => mirror.server.index.checkpointer.running, 2_000, 'checkpointer thread started')
  let last = openFds()
  for (let i = 0; i < 30; i++) {
    await sleep(100)
    const now = openFds()
    if (now === last) return now
    last = now
  }
  return last
}
/** This process's open files under the store's blobs/ and tmp/ (the index is always open). */
function storeFiles(mirror: TestMirror): number {
  let n = 0
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`)
      if (target.startsWith(join(mirror.dataDir, 'blobs')) || target.startsWith(join(mirror.dataDir, 'tmp')))
        n++
    } catch {
      // closed meanwhile
    }
  }
  return n
}

/** A raw connection that records what it receives and when it was closed. */
interface Raw {
  socket: Socket
  data: () => string
  bytes: () => number
  closedAt: () => number | undefined
  closed: Promise<void>
}

function rawConnect(url: string, opts: { read?: boolean } = {}): Promise<Raw> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname)
    let data = ''
    let bytes = 0
    let closedAt: number | undefined
    const closed = new Promise<void>((r) =>
      socket.once('close', () => {
        closedAt = Date.now()
        r()
      }),
    )
    socket.on('error', () => {})
    if (opts.read === false) socket.pause()
    else
      socket.on('data', (d: Buffer) => {
        bytes += d.length
        if (data.length < 64 * 1024) data += d.toString('latin1')
      })
    socket.once('connect', () =>
      resolve({ socket, data: () => data, bytes: () => bytes, closedAt: () => closedAt, closed }),
    )
    socket.once('error', reject)
  })
}

/** Waits for `p`, failing the test after `ms` instead of hanging. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([p, late])
  } finally {
    clearTimeout(timer)
  }
}

async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`)
    await sleep(20)
  }
}

function ociBody(raw: string): { status: number; code: string; headers: string } {
  const end = raw.indexOf('\r\n\r\n')
  const headers = raw.slice(0, end)
  const body = JSON.parse(raw.slice(end + 4)) as { errors: { code: string; message: string }[] }
  expect(typeof body.errors[0]?.message).toBe('string')
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1]), code: body.errors[0]!.code, headers }
}

async function cachedBlob(mirror: TestMirror, size: number): Promise<string> {
  const digest = fake.up.addBlob(REPO, randomBytes(size))
  const res = await mirror.get(`/v2/${REPO}/blobs/${digest}`)
  expect(sha256(res.body)).toBe(digest)
  return digest
}

describe('deadlines', () => {
  test('a client trickling header lines is answered 408 and closed at the header deadline', async () => {
    const mirror = await fake.mirror({ env: { PULLCACHE_HEADER_TIMEOUT: '1s' } })
    const raw = await rawConnect(mirror.url)
    const started = Date.now()
    raw.socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n')
    const trickle = setInterval(() => raw.socket.write(`X-Slow-${Date.now()}: 1\r\n`), 200)
    try {
      await within(raw.closed, 5_000, 'slowloris closed')
    } finally {
      clearInterval(trickle)
    }
    expect(raw.closedAt()! - started).toBeLessThan(2_500)
    const answer = ociBody(raw.data())
    expect(answer.status).toBe(408)
    expect(answer.headers).toMatch(/\r\nConnection: close/i)
  })

  test('a connection that sends nothing is closed at the header deadline', async () => {
    const mirror = await fake.mirror({ env: { PULLCACHE_HEADER_TIMEOUT: '1s' } })
    const raw = await rawConnect(mirror.url)
    await within(raw.closed, 5_000, 'silent connection closed')
  })

  test('an idle keep-alive connection is closed after keepalive_timeout', async () => {
    const mirror = await fake.mirror({ env: { PULLCACHE_KEEPALIVE_TIMEOUT: '1s' } })
    const raw = await rawConnect(mirror.url)
    raw.socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n')
    await until(() => raw.data().includes('{}'), 2_000, 'first answer')
    const answered = Date.now()
    await within(raw.closed, 5_000, 'idle connection closed')
    expect(raw.closedAt()! - answered).toBeGreaterThanOrEqual(800)
  })

  test('a client that takes nothing is cut after send_timeout and its pin and file handle are let go', async () => {
    const mirror = await fake.mirror({ env: { PULLCACHE_SEND_TIMEOUT: '1s' } })
    // Larger than what the kernel buffers on loopback for a reader that reads nothing.
    const digest = await cachedBlob(mirror, 24 * 1024 * 1024)
    const fds = await settledFds(mirror)
    const raw = await rawConnect(mirror.url, { read: false })
    raw.socket.write(`GET /v2/${REPO}/blobs/${digest} HTTP/1.1\r\nHost: x\r\n\r\n`)
    await until(() => mirror.server.mirror.isInUse(digest), 2_000, 'response started')
    // A client that reads nothing does not see the close either: the log says when it came.
    await until(
      () => mirror.logs.some((l) => l.event === 'http.send_timeout'),
      8_000,
      'non-reading client cut',
    )
    await until(() => !mirror.server.mirror.isInUse(digest), 2_000, 'pin released')
    await until(() => storeFiles(mirror) === 0, 2_000, 'blob file closed')
    raw.socket.resume()
    await within(raw.closed, 5_000, 'client sees the cut')
    expect(raw.bytes()).toBeLessThan(24 * 1024 * 1024)
    await until(() => openFds() <= fds, 2_000, 'socket closed')
    // With the pin gone, eviction can take the blob.
    mirror.server.evictor.setPolicy({
      maxSize: 1024,
      highWater: 0.95,
      lowWater: 0.85,
      maxUnusedAgeMs: null,
      pins: [],
    })
    const result = await mirror.server.evictor.run()
    expect(result.skippedInUse).toBe(0)
    expect(result.blobs).toBe(1)
  })

  test('a client waiting on a slow upstream is not taken for a dead client', async () => {
    const mirror = await fake.mirror({ env: { PULLCACHE_SEND_TIMEOUT: '500ms' } })
    const bytes = randomBytes(600 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    // Pauses of 300 ms, and the fill writes to disk only every MiB: the client waits about 2 s
    // on upstream with nothing queued for it, four times send_timeout.
    fake.up.fault({ path: /\/blobs\//, host: 'cdn' }, { kind: 'slow', chunkBytes: 100 * 1024, delayMs: 300 })
    const res = await mirror.get(`/v2/${REPO}/blobs/${digest}`)
    expect(res.status).toBe(200)
    expect(sha256(res.body)).toBe(digest)
  })
})

describe('release however the client leaves', () => {
  /** Holds mirror.blob's answer until `open()`: the client leaves while the mirror still works. */
  function gateMirror(mirror: TestMirror) {
    const m = mirror.server.mirror
    const original = m.blob.bind(m)
    let open!: () => void
    const gate = new Promise<void>((r) => (open = r))
    let entered = 0
    const spy = vi.spyOn(m, 'blob').mockImplementation(async (...args) => {
      entered++
      const answer = await original(...args)
      await gate
      return answer
    })
    return { open, entered: () => entered, restore: () => spy.mockRestore() }
  }

  for (const [what, request] of [
    ['GET', (p: string) => `GET ${p} HTTP/1.1\r\nHost: x\r\n\r\n`],
    ['HEAD', (p: string) => `HEAD ${p} HTTP/1.1\r\nHost: x\r\n\r\n`],
    ['a 304', (p: string, d: string) => `GET ${p} HTTP/1.1\r\nHost: x\r\nIf-None-Match: "${d}"\r\n\r\n`],
    ['a 416', (p: string) => `GET ${p} HTTP/1.1\r\nHost: x\r\nRange: bytes=999999999-\r\n\r\n`],
  ] as const) {
    test(`${what}: a client gone before the mirror answered leaves no pin and no open file`, async () => {
      const mirror = await fake.mirror()
      const digest = await cachedBlob(mirror, 1024 * 1024)
      const fds = await settledFds(mirror)
      const gate = gateMirror(mirror)
      try {
        const raw = await rawConnect(mirror.url)
        raw.socket.write(request(`/v2/${REPO}/blobs/${digest}`, digest))
        await until(() => gate.entered() === 1, 2_000, 'request reached the mirror')
        raw.socket.destroy()
        await raw.closed
        await sleep(50)
        gate.open()
        await until(() => !mirror.server.mirror.isInUse(digest), 2_000, 'pin released')
        await until(() => storeFiles(mirror) === 0, 2_000, 'blob file closed')
        await until(() => openFds() <= fds, 2_000, 'socket closed')
      } finally {
        gate.open()
        gate.restore()
      }
    })
  }

  test('a client gone while waiting on a hung upstream holds nothing once the fill ends', async () => {
    const mirror = await fake.mirror()
    const bytes = randomBytes(256 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault({ path: /\/blobs\//, host: 'cdn' }, { kind: 'slow', chunkBytes: 64 * 1024, delayMs: 200 })
    const raw = await rawConnect(mirror.url)
    raw.socket.write(`GET /v2/${REPO}/blobs/${digest} HTTP/1.1\r\nHost: x\r\n\r\n`)
    await until(() => mirror.server.mirror.inflight().length === 1, 2_000, 'fill started')
    raw.socket.destroy()
    // The fill goes on without the client and commits; then nothing of the client is left.
    await until(() => mirror.server.mirror.inflight().length === 0, 5_000, 'fill done')
    expect(mirror.server.mirror.isInUse(digest)).toBe(false)
    await until(() => storeFiles(mirror) === 0, 2_000, 'temp and blob files closed')
    const again = await mirror.get(`/v2/${REPO}/blobs/${digest}`)
    expect(again.headers['x-pullcache-cache']).toBe('hit')
  })
})

describe('connection cap', () => {
  test('past max_connections new connections are closed at once and the cap is logged', async () => {
    const mirror = await fake.mirror({ env: { PULLCACHE_MAX_CONNECTIONS: '2' } })
    const held = [await rawConnect(mirror.url), await rawConnect(mirror.url)]
    held[0]!.socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n')
    await until(() => held[0]!.data().includes('{}'), 2_000, 'first answer')
    held[1]!.socket.write('GET /v2/')
    const over = await rawConnect(mirror.url)
    over.socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n')
    await within(over.closed, 2_000, 'connection over the cap closed')
    expect(over.data()).toBe('')
    expect(mirror.logs.some((l) => l.event === 'http.connections_capped')).toBe(true)
    // Idle keep-alive connections made room; the one mid-request is still served.
    await within(held[0]!.closed, 2_000, 'idle keep-alive connection closed')
    held[1]!.socket.write(' HTTP/1.1\r\nHost: x\r\n\r\n')
    await until(() => held[1]!.data().includes('{}'), 2_000, 'request in progress answered')
    const after = await mirror.get('/v2/')
    expect(after.status).toBe(200)
    held[1]!.socket.destroy()
  })
})

describe('pipelined responses', () => {
  test('a client gone with blob requests still queued behind another leaves no pin and no open file', async () => {
    const mirror = await fake.mirror()
    const digest = await cachedBlob(mirror, 8 * 1024 * 1024)
    await sleep(100)
    const raw = await rawConnect(mirror.url, { read: false })
    const get = `GET /v2/${REPO}/blobs/${digest} HTTP/1.1\r\nHost: x\r\n\r\n`
    raw.socket.write(get + get + get)
    await until(() => mirror.server.mirror.isInUse(digest), 2_000, 'first response started')
    await sleep(200)
    raw.socket.destroy()
    await until(() => !mirror.server.mirror.isInUse(digest), 2_000, 'pins released')
    await until(() => storeFiles(mirror) === 0, 2_000, 'blob files closed')
  })
})
