// Where cluster members come from besides the static list (src/cluster/): a DNS name expanded to
// one node per address, heartbeats in the bucket judged by the bucket's clock alone, and how
// Membership merges what the sources name with the static list and still lets probes decide.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, test } from 'vitest'
import { BucketMembers, nodeId } from '../../src/cluster/bucket-members.js'
import { DnsMembers } from '../../src/cluster/dns-members.js'
import type { MemberSource } from '../../src/cluster/member-source.js'
import { Membership } from '../../src/cluster/membership.js'
import { createLogger } from '../../src/log.js'
import type { BoardEntry, Heartbeat, MemberBoard } from '../../src/store/member-board.js'
import { waitFor } from '../support/wait-for.js'

const quiet = createLogger('error', () => {})

describe('DNS members', () => {
  test('every A and AAAA record is a node at the name’s scheme and port, spelled as node URLs are', async () => {
    const asked: string[] = []
    const dns = new DnsMembers('http://pullcache-headless.mirrors.svc:5000', async (host) => {
      asked.push(host)
      return [
        { address: '10.0.0.7', family: 4 },
        { address: '10.0.0.5', family: 4 },
        { address: 'fd00::1', family: 6 },
        { address: '10.0.0.5', family: 4 },
      ]
    })
    expect(await dns.discover()).toEqual([
      'http://10.0.0.5:5000',
      'http://10.0.0.7:5000',
      'http://[fd00::1]:5000',
    ])
    expect(asked).toEqual(['pullcache-headless.mirrors.svc'])
  })

  test('a default port stays implicit, as in a configured node URL', async () => {
    const dns = new DnsMembers('https://pullcache.internal', async () => [
      { address: '192.0.2.4', family: 4 },
    ])
    expect(await dns.discover()).toEqual(['https://192.0.2.4'])
  })

  test('a name that does not resolve rejects (the last answer is kept by Membership)', async () => {
    const dns = new DnsMembers('http://gone.invalid:5000', async () => {
      throw Object.assign(new Error('getaddrinfo ENOTFOUND gone.invalid'), { code: 'ENOTFOUND' })
    })
    await expect(dns.discover()).rejects.toThrow('ENOTFOUND')
  })
})

/** A board in memory whose clock is whatever the test says, far from this machine's. */
class FakeBoard implements MemberBoard {
  now = new Date('2001-02-03T04:05:06Z')
  readonly objects = new Map<string, { heartbeat: Heartbeat | undefined; lastModified: Date }>()
  closed = false

  async beat(id: string, heartbeat: Heartbeat): Promise<void> {
    this.objects.set(id, { heartbeat, lastModified: this.now })
  }
  async read(): Promise<{ now: Date; entries: BoardEntry[] }> {
    return {
      now: this.now,
      entries: [...this.objects].map(([nodeId, o]) => ({ nodeId, ...o })),
    }
  }
  async remove(id: string): Promise<void> {
    this.objects.delete(id)
  }
  close(): void {
    this.closed = true
  }
  /** Another node's heartbeat, written `ageMs` before the board's now. */
  put(url: string, ageMs: number): void {
    this.objects.set(nodeId(url), {
      heartbeat: { url, startedAt: '2001-01-01T00:00:00Z', version: 'x' },
      lastModified: new Date(this.now.getTime() - ageMs),
    })
  }
}

describe('bucket heartbeats', () => {
  const SELF = 'http://10.0.0.1:5000'
  const members = (board: FakeBoard) => new BucketMembers({ board, self: SELF, version: '1.2.3', log: quiet })

  test('a node is a member while its heartbeat is within 10 s of the bucket’s time, whatever the local clock', async () => {
    const board = new FakeBoard()
    board.put('http://10.0.0.2:5000', 0)
    board.put('http://10.0.0.3:5000', 9_000)
    board.put('http://10.0.0.4:5000', 11_000)
    const found = await members(board).discover()
    expect(found).toEqual(['http://10.0.0.1:5000', 'http://10.0.0.2:5000', 'http://10.0.0.3:5000'])
    // Its own heartbeat was written, with its URL and version.
    expect(board.objects.get(nodeId(SELF))?.heartbeat).toMatchObject({ url: SELF, version: '1.2.3' })
    expect(board.objects.get(nodeId(SELF))?.lastModified).toEqual(board.now)
  })

  test('heartbeats gone for over 10 minutes are removed; ones merely stale are left', async () => {
    const board = new FakeBoard()
    board.put('http://10.0.0.4:5000', 60_000)
    board.put('http://10.0.0.5:5000', 601_000)
    await members(board).discover()
    await new Promise((resolve) => setImmediate(resolve))
    expect(board.objects.has(nodeId('http://10.0.0.4:5000'))).toBe(true)
    expect(board.objects.has(nodeId('http://10.0.0.5:5000'))).toBe(false)
  })

  test('an object that could not be read is no member; leaving removes the own heartbeat for good', async () => {
    const board = new FakeBoard()
    board.objects.set('half-written', { heartbeat: undefined, lastModified: board.now })
    const source = members(board)
    expect(await source.discover()).toEqual([SELF])
    await source.leave()
    expect(board.objects.has(nodeId(SELF))).toBe(false)
    expect(board.closed).toBe(true)
    // A round that starts after leaving does not write it back.
    expect(await source.discover()).toEqual([])
    expect(board.objects.has(nodeId(SELF))).toBe(false)
  })
})

describe('Membership with sources', () => {
  const servers: Server[] = []
  const started: Membership[] = []
  afterEach(async () => {
    for (const m of started.splice(0)) m.close()
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))))
  })

  /** A node that answers its health check, at a URL of its own. */
  async function healthyNode(): Promise<string> {
    const server = createServer((_req, res) => res.end('ok'))
    servers.push(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  }

  /** A source whose answer the test sets; `undefined` makes it fail. */
  function fakeSource(
    name: 'dns' | 'bucket',
    initial: string[],
  ): MemberSource & { urls: string[] | undefined } {
    return {
      name,
      urls: initial,
      async discover() {
        if (this.urls === undefined) throw new Error(`${name} unreachable`)
        return this.urls
      },
      async leave() {},
    }
  }

  test('found members merge with the static list; each shows how it was found, and probes decide who is live', async () => {
    const [self, a, b] = [await healthyNode(), await healthyNode(), await healthyNode()]
    const silent = 'http://127.0.0.1:9' // discard port: nothing answers
    const dns = fakeSource('dns', [self, a, silent])
    const bucket = fakeSource('bucket', [self, b, a])
    const m = new Membership({ self, peers: [a], sources: [dns, bucket], log: quiet, probeMs: 50 })
    started.push(m)
    await waitFor(() => m.members().length === 4 && m.live().length === 3, { what: 'the first round' })
    const view = Object.fromEntries(m.members().map((v) => [v.url, v]))
    expect(view[self]).toMatchObject({ self: true, live: true, found: ['self'] })
    expect(view[a]).toMatchObject({ live: true, found: ['static', 'dns', 'bucket'] })
    expect(view[b]).toMatchObject({ live: true, found: ['bucket'] })
    expect(view[silent]).toMatchObject({ live: false, found: ['dns'] })
    expect(m.live()).toEqual([self, a, b].sort())
    expect([self, a, b]).toContain(m.ownerOf('sha256:abc'))

    // A source that fails keeps its last answer; one that stops naming a node drops it, unless
    // another source (here the static list) still names it.
    bucket.urls = undefined
    dns.urls = [self]
    await waitFor(() => m.members().length === 3, { what: 'the silent node to go' })
    expect(m.members().map((v) => v.url)).toEqual([self, a, b].sort())
    expect(m.members().find((v) => v.url === a)?.found).toEqual(['static', 'bucket'])
    bucket.urls = [self]
    m.setPeers([])
    await waitFor(() => m.members().length === 1, { what: 'every peer to go' })
    expect(m.clustered).toBe(false)
    expect(m.ownerOf('sha256:abc')).toBe(self)
  })

  test('a node a source names for the first time counts only once a probe found it answering', async () => {
    const self = await healthyNode()
    const source = fakeSource('bucket', [self])
    const m = new Membership({ self, peers: [], sources: [source], log: quiet, probeMs: 60_000 })
    started.push(m)
    // The round the timer runs; the first one started with the Membership.
    const round = () => (m as unknown as { probe(): Promise<void> }).probe()
    await round()
    const late = 'http://127.0.0.1:9'
    source.urls = [self, late]
    await round()
    expect(m.members().find((v) => v.url === late)).toMatchObject({ live: false, found: ['bucket'] })
    expect(m.live()).toEqual([self])
    expect(m.clustered).toBe(true)
  })

  test('a source that does not name this node is said once: node_url is not how the others see it', async () => {
    const self = await healthyNode()
    const lines: Record<string, unknown>[] = []
    const log = createLogger('warn', (line) => lines.push(JSON.parse(line) as Record<string, unknown>))
    const dns = fakeSource('dns', ['http://10.9.9.9:5000'])
    const m = new Membership({ self, peers: [], sources: [dns], log, probeMs: 60_000 })
    started.push(m)
    const round = () => (m as unknown as { probe(): Promise<void> }).probe()
    await round()
    await round()
    expect(lines.filter((l) => l.event === 'cluster.self_not_named')).toEqual([
      expect.objectContaining({ source: 'dns', self, named: ['http://10.9.9.9:5000'] }),
    ])
  })

  test('leaving waits for the round under way, then lets each source tell the others', async () => {
    const self = await healthyNode()
    const events: string[] = []
    const source: MemberSource = {
      name: 'bucket',
      async discover() {
        events.push('discover')
        await new Promise((r) => setTimeout(r, 50))
        events.push('discovered')
        return [self]
      },
      async leave() {
        events.push('leave')
      },
    }
    const m = new Membership({ self, peers: [], sources: [source], log: quiet, probeMs: 60_000 })
    started.push(m)
    await m.leave()
    expect(events).toEqual(['discover', 'discovered', 'leave'])
  })
})
