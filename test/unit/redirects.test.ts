// Which blob redirects pullcache follows (src/upstream/redirects.ts): https only, never into
// loopback, private or link-local networks unless the upstream itself is on one.

import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { describe, expect, test } from 'vitest'
import { UpstreamError } from '../../src/errors.js'
import { createLogger } from '../../src/log.js'
import { createMetrics } from '../../src/metrics.js'
import {
  followRedirects,
  isLocalAddress,
  isLocalOrigin,
  redirectLookup,
  redirectRefusal,
} from '../../src/upstream/redirects.js'
import type { Response } from '../../src/upstream/response.js'
import { UpstreamState } from '../../src/upstream/state.js'
import { Transport } from '../../src/upstream/transport.js'

const refusal = (url: string, local = false) => redirectRefusal(new URL(url), local)

describe('redirect policy', () => {
  test('a public upstream is followed to https on public hosts only', () => {
    expect(refusal('https://production.cloudflare.docker.com/x?sig=1')).toBeUndefined()
    expect(refusal('https://203.0.113.9/x')).toBeUndefined()
    expect(refusal('http://production.cloudflare.docker.com/x')).toMatch(/only https/)
    expect(refusal('http://127.0.0.1:9000/x')).toMatch(/only https/)
    for (const url of [
      'https://127.0.0.1/x',
      'https://localhost/x',
      'https://cdn.localhost/x',
      'https://10.1.2.3/x',
      'https://172.20.0.1/x',
      'https://192.168.1.1/x',
      'https://169.254.169.254/latest/meta-data',
      'https://[::1]/x',
      'https://[fe80::1]/x',
      'https://[fd00::5]/x',
      'https://[::ffff:127.0.0.1]/x',
      'https://0.0.0.0/x',
    ]) {
      expect(refusal(url), url).toMatch(/loopback or private/)
    }
    expect(refusal('ftp://example.com/x')).toMatch(/non-http/)
  })

  test('a local upstream may be followed within local networks, over http too', () => {
    expect(refusal('http://127.0.0.1:9000/x', true)).toBeUndefined()
    expect(refusal('http://10.0.0.7/x', true)).toBeUndefined()
    expect(refusal('https://storage.example.com/x', true)).toBeUndefined()
    expect(refusal('http://203.0.113.9/x', true)).toMatch(/http on a public address/)
  })

  test('an upstream is local by its address or a local name', async () => {
    expect(await isLocalOrigin(new URL('http://127.0.0.1:5000'))).toBe(true)
    expect(await isLocalOrigin(new URL('http://localhost:5000'))).toBe(true)
    expect(await isLocalOrigin(new URL('https://[fd00::7]'))).toBe(true)
    expect(await isLocalOrigin(new URL('https://203.0.113.5'))).toBe(false)
  })

  test('addresses', () => {
    expect(isLocalAddress('127.0.0.1')).toBe(true)
    expect(isLocalAddress('100.64.0.1')).toBe(true)
    expect(isLocalAddress('8.8.8.8')).toBe(false)
    expect(isLocalAddress('2001:db8::1')).toBe(false)
    expect(isLocalAddress('not-an-address')).toBe(false)
  })

  test('a name resolving to a loopback address is refused at lookup, unless the upstream is local', async () => {
    const resolve = (allow: boolean) =>
      new Promise<unknown>((done) =>
        redirectLookup(() => allow)('localhost', {}, (err, address) => done(err ?? address)),
      )
    const refused = await resolve(false)
    expect(refused).toBeInstanceOf(UpstreamError)
    expect((refused as UpstreamError).message).toMatch(/resolves to a loopback or private address/)
    expect(await resolve(true)).toMatch(/^(127\.0\.0\.1|::1)$/)
  })

  test('refused targets are never connected to: not by address, not by a name that resolves local', async () => {
    let connections = 0
    const target = createServer((_req, res) => res.end('secret'))
    target.on('connection', () => connections++)
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', r))
    const port = (target.address() as AddressInfo).port
    const metrics = createMetrics()
    const log = createLogger('error', () => {})
    const state = new UpstreamState({ rateLimitReserve: 0, offline: false, log, metrics, host: 'ghcr.io' })
    const transport = new Transport({
      connectTimeoutMs: 1000,
      headerTimeoutMs: 1000,
      idleTimeoutMs: 1000,
      connections: 1,
      state,
      metrics,
      host: 'ghcr.io',
      allowLocalRedirects: () => false,
    })
    try {
      // A 307 from a public upstream to an http loopback URL: refused before any request.
      const redirect = (location: string) =>
        ({
          statusCode: 307,
          headers: { location },
          body: { dump: async () => {} },
        }) as unknown as Response
      let sent = 0
      const hops = {
        origin: new URL('https://ghcr.io'),
        localUpstream: async () => false,
        toOrigin: async () => {
          throw new Error('not the origin')
        },
        elsewhere: (url: URL) => {
          sent++
          return transport.request('cdn', 'GET', url, {})
        },
      }
      const refused = await followRedirects(redirect(`http://127.0.0.1:${port}/x`), hops).catch((e) => e)
      expect(refused).toBeInstanceOf(UpstreamError)
      expect((refused as UpstreamError).kind).toBe('SERVER')
      expect(sent).toBe(0)
      // The transport alone (names in a redirect's URL are refused before it): the address a name
      // resolves to is refused where it is resolved, before a connection.
      const byName = await transport
        .request('cdn', 'GET', new URL(`https://localhost:${port}/x`), {})
        .catch((e) => e)
      expect(byName).toBeInstanceOf(UpstreamError)
      expect((byName as UpstreamError).message).toMatch(/loopback or private/)
      expect(connections).toBe(0)
    } finally {
      await transport.close()
      await new Promise((r) => target.close(r))
    }
  })
})
