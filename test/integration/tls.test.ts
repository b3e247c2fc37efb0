// TLS on the listener, in-process: the config refuses a set of files that cannot work (with
// every problem and the config's exit path), the server speaks HTTPS with the certificate made
// here by openssl, a reload swaps the certificate for new handshakes while a keep-alive
// connection opened before goes on, a broken new set keeps the old one, and a client
// certificate the CA signed signs its client in.

import { randomBytes } from 'node:crypto'
import { copyFile, readFile } from 'node:fs/promises'
import type { IncomingMessage } from 'node:http'
import { Agent, request } from 'node:https'
import { join } from 'node:path'
import { connect, type PeerCertificate, type TLSSocket } from 'node:tls'
import { beforeAll, describe, expect, test } from 'vitest'
import { loadConfig } from '../../src/config.js'
import { problems } from '../support/config-problems.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { runCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'
import { makeTestCa, type TestCa } from '../support/test-certs.js'
import { tmpRoot } from '../support/tmp.js'

let ca: TestCa
let other: TestCa
let first: { cert: string; key: string }
let second: { cert: string; key: string }
beforeAll(async () => {
  ca = await makeTestCa()
  other = await makeTestCa('other CA')
  first = await ca.server('first')
  second = await ca.server('second')
})

describe('the tls config', () => {
  test('cert and key from the environment; client_auth follows client_ca unless set', () => {
    const plain = loadConfig({ env: {} })
    expect(plain.tls).toEqual({ cert: null, key: null, client_ca: null, client_auth: 'none' })
    const env = { PULLCACHE_TLS_CERT: first.cert, PULLCACHE_TLS_KEY: first.key }
    expect(loadConfig({ env }).tls.client_auth).toBe('none')
    const mtls = loadConfig({ env: { ...env, PULLCACHE_TLS_CLIENT_CA: ca.cert } })
    expect(mtls.tls).toEqual({
      cert: first.cert,
      key: first.key,
      client_ca: ca.cert,
      client_auth: 'optional',
    })
    const required = { ...env, PULLCACHE_TLS_CLIENT_CA: ca.cert, PULLCACHE_TLS_CLIENT_AUTH: 'require' }
    expect(loadConfig({ env: required }).tls.client_auth).toBe('require')
  })

  test('every problem with the files is reported at load, with its key, and no key material', async () => {
    expect(problems(() => loadConfig({ env: { PULLCACHE_TLS_CERT: first.cert } }))).toEqual([
      'tls.key: tls.cert is set but no key',
    ])
    expect(problems(() => loadConfig({ env: { PULLCACHE_TLS_KEY: first.key } }))).toEqual([
      'tls.cert: tls.key is set but no certificate',
    ])
    const mismatched = problems(() =>
      loadConfig({ env: { PULLCACHE_TLS_CERT: first.cert, PULLCACHE_TLS_KEY: second.key } }),
    )
    expect(mismatched).toEqual([`tls.key: ${second.key} is not the key of the certificate in ${first.cert}`])
    const missing = join(ca.dir, 'nothing.pem')
    const unreadable = problems(() =>
      loadConfig({
        env: { PULLCACHE_TLS_CERT: missing, PULLCACHE_TLS_KEY: first.key, PULLCACHE_TLS_CLIENT_CA: missing },
      }),
    )
    expect(unreadable).toEqual([
      `tls.cert: cannot read ${missing}: ENOENT`,
      `tls.client_ca: cannot read ${missing}: ENOENT`,
    ])
    // A key where the certificate should be: refused, and the message holds none of the key.
    const swapped = problems(() =>
      loadConfig({ env: { PULLCACHE_TLS_CERT: first.key, PULLCACHE_TLS_KEY: first.key } }),
    )
    expect(swapped).toEqual([`tls.cert: ${first.key} holds no PEM certificate`])
    const keyText = (await readFile(first.key, 'utf8')).split('\n')[1]!
    expect(JSON.stringify(swapped)).not.toContain(keyText)
    expect(problems(() => loadConfig({ env: { PULLCACHE_TLS_CLIENT_AUTH: 'require' } })).sort()).toEqual([
      'tls.client_auth: "require" needs tls.client_ca, the CA client certificates are checked against',
    ])
    expect(problems(() => loadConfig({ env: { PULLCACHE_TLS_CLIENT_CA: ca.cert } }))).toEqual([
      'tls.client_ca: client certificates need TLS on the listener (tls.cert and tls.key)',
    ])
  })

  test('anonymous access may be turned off with client certificates as the only way in', () => {
    const env = {
      PULLCACHE_TLS_CERT: first.cert,
      PULLCACHE_TLS_KEY: first.key,
      PULLCACHE_AUTH_ANONYMOUS: 'false',
    }
    expect(problems(() => loadConfig({ env }))[0]).toContain('auth.anonymous')
    expect(loadConfig({ env: { ...env, PULLCACHE_TLS_CLIENT_CA: ca.cert } }).auth.anonymous).toBe(false)
  })
})

describe('the command line', () => {
  test('a key of another certificate: config check and serve both stop with exit 2 and say which', async () => {
    const env = { PULLCACHE_TLS_CERT: first.cert, PULLCACHE_TLS_KEY: second.key }
    const problem = `tls.key: ${second.key} is not the key of the certificate in ${first.cert}`
    const check = await runCli(['config', 'check'], { env })
    expect(check.code).toBe(2)
    expect(check.stderr).toContain(problem)
    // serve by its flags this time.
    const serve = await runCli([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--data-dir',
      join(ca.dir, 'never'),
      '--tls-cert',
      first.cert,
      '--tls-key',
      second.key,
    ])
    expect(serve.code).toBe(2)
    expect(serve.stderr).toContain(problem)
    const keyLine = (await readFile(second.key, 'utf8')).split('\n')[1]!
    expect(check.stderr + serve.stderr + serve.stdout).not.toContain(keyLine)

    // Good files: config check prints the tls section, client_auth as it applies.
    const good = await runCli(['config', 'check'], {
      env: { PULLCACHE_TLS_CERT: first.cert, PULLCACHE_TLS_KEY: first.key, PULLCACHE_TLS_CLIENT_CA: ca.cert },
    })
    expect(good.code).toBe(0)
    expect(JSON.parse(good.stdout).tls).toEqual({
      cert: first.cert,
      key: first.key,
      client_ca: ca.cert,
      client_auth: 'optional',
    })
  })
})

/** One request over `agent`; resolves with the answer and the certificate the server showed. */
function get(
  url: string,
  path: string,
  agent: Agent,
): Promise<{ status: number; body: string; peer: PeerCertificate; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, url), { agent }, (res: IncomingMessage) => {
      // Read now: a keep-alive socket goes back to the agent once the body is read.
      const peer = (res.socket as TLSSocket).getPeerCertificate()
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks).toString(),
          peer,
          reused: req.reusedSocket,
        }),
      )
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/** The subject CN of the certificate a fresh handshake gets. */
function handshakeCn(url: string, caPem: Buffer): Promise<string> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port), ca: caPem }, () => {
      const cn = socket.getPeerCertificate().subject.CN
      socket.end()
      resolve(String(cn))
    })
    socket.on('error', reject)
  })
}

describe('an HTTPS listener', () => {
  const fx = useFakeUpstream()

  /** Certificate files in a dir of their own, so a test can renew them in place. */
  async function liveFiles(): Promise<{ cert: string; key: string }> {
    const dir = await tmpRoot('pullcache-live-tls')
    const files = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key') }
    await copyFile(first.cert, files.cert)
    await copyFile(first.key, files.key)
    return files
  }

  function reloadSame(mirror: TestMirror, env: Record<string, string>) {
    return mirror.server.reload(
      loadConfig({
        env: {
          PULLCACHE_LISTEN: '127.0.0.1:0',
          PULLCACHE_DATA_DIR: mirror.dataDir,
          PULLCACHE_UPSTREAM: fx.up.url,
          ...env,
        },
      }),
    )
  }

  test('speaks HTTPS with the chain, and a reload swaps it for new handshakes only', async () => {
    const files = await liveFiles()
    const env = { PULLCACHE_TLS_CERT: files.cert, PULLCACHE_TLS_KEY: files.key }
    const mirror = await fx.mirror({ env })
    expect(mirror.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/)
    expect(mirror.logs.find((l) => l.event === 'listening')).toMatchObject({
      url: mirror.url,
      tls: { subject: 'CN=first', client_auth: 'none' },
    })
    const caPem = await readFile(ca.cert)
    const agent = new Agent({ ca: caPem, keepAlive: true, maxSockets: 1 })
    try {
      // The file holds the leaf and then its chain; the whole chain is sent.
      expect((await readFile(first.cert, 'utf8')).match(/BEGIN CERTIFICATE/g)).toHaveLength(2)
      const before = await get(mirror.url, '/v2/', agent)
      expect(before.status).toBe(200)
      expect(before.peer.subject.CN).toBe('first')

      // Renewed in place, as certbot or cert-manager do; then SIGHUP.
      await copyFile(second.cert, files.cert)
      await copyFile(second.key, files.key)
      expect(reloadSame(mirror, env).changed).toContain('tls')
      expect(await handshakeCn(mirror.url, caPem)).toBe('second')
      const kept = await get(mirror.url, '/v2/', agent)
      expect(kept).toMatchObject({ status: 200, reused: true })
      expect(kept.peer.subject.CN).toBe('first')

      // A broken renewal (the key of another certificate): loadConfig refuses it, so a SIGHUP
      // keeps the config in force (cli/serve.ts). Files that break between that check and the
      // server's own read are refused there too, and the set in force stays.
      await copyFile(first.key, files.key)
      expect(() => loadConfig({ env })).toThrow('is not the key of the certificate')
      await copyFile(second.key, files.key)
      const checked = loadConfig({ env: { ...env, PULLCACHE_UPSTREAM: fx.up.url } })
      await copyFile(first.key, files.key)
      expect(mirror.server.reload(checked).changed).not.toContain('tls')
      const rejected = mirror.logs.find((l) => l.event === 'tls.rejected')
      expect(rejected).toMatchObject({ level: 'error', kept: { subject: 'CN=second' } })
      expect(JSON.stringify(rejected)).toContain('is not the key of the certificate')
      expect(await handshakeCn(mirror.url, caPem)).toBe('second')
      // Nothing of the keys is ever logged.
      const keyLine = (await readFile(first.key, 'utf8')).split('\n')[1]!
      expect(JSON.stringify(mirror.logs)).not.toContain(keyLine)

      // Turning TLS off is not something a reload can do.
      expect(reloadSame(mirror, {}).needRestart).toContain('tls')
    } finally {
      agent.destroy()
    }
  })

  test('the plain-HTTP limits hold: a slow handshake is cut at header_timeout', async () => {
    const env = {
      PULLCACHE_TLS_CERT: first.cert,
      PULLCACHE_TLS_KEY: first.key,
      PULLCACHE_HEADER_TIMEOUT: '300ms',
    }
    const mirror = await fx.mirror({ env })
    const { hostname, port } = new URL(mirror.url)
    const net = await import('node:net')
    const started = Date.now()
    await new Promise<void>((resolve, reject) => {
      const socket = net.connect(Number(port), hostname)
      socket.on('error', reject)
      socket.on('close', () => resolve())
      socket.resume()
    })
    // Cut by the head's clock (300 ms), not at once and not at Node's 120 s handshake default.
    expect(Date.now() - started).toBeGreaterThanOrEqual(250)
    expect(Date.now() - started).toBeLessThan(5_000)
  })

  test('the send clock holds over TLS: a client that takes nothing is cut after send_timeout', async () => {
    const env = { PULLCACHE_TLS_CERT: first.cert, PULLCACHE_TLS_KEY: first.key, PULLCACHE_SEND_TIMEOUT: '1s' }
    const mirror = await fx.mirror({ env })
    const caPem = await readFile(ca.cert)
    const repo = 'library/tls-limits'
    // Larger than what the kernel and the TLS layer buffer on loopback for a reader that reads nothing.
    const digest = fx.up.addBlob(repo, randomBytes(24 * 1024 * 1024))
    const agent = new Agent({ ca: caPem })
    try {
      expect((await get(mirror.url, `/v2/${repo}/blobs/${digest}`, agent)).status).toBe(200)
    } finally {
      agent.destroy()
    }
    const { hostname, port } = new URL(mirror.url)
    const socket = await new Promise<TLSSocket>((resolve, reject) => {
      const s = connect({ host: hostname, port: Number(port), ca: caPem }, () => resolve(s))
      s.once('error', reject)
    })
    socket.on('error', () => {})
    socket.pause()
    socket.write(`GET /v2/${repo}/blobs/${digest} HTTP/1.1\r\nHost: x\r\n\r\n`)
    const started = Date.now()
    while (!mirror.logs.some((l) => l.event === 'http.send_timeout')) {
      if (Date.now() - started > 8_000) throw new Error('the client that reads nothing was not cut')
      await new Promise((r) => setTimeout(r, 50))
    }
    expect(Date.now() - started).toBeGreaterThanOrEqual(900)
    socket.destroy()
  })

  test('client certificates: the CA signed one signs in by its CN; others are anonymous or refused', async () => {
    const alice = await ca.client('alice')
    const mallory = await other.client('alice')
    const caPem = await readFile(ca.cert)
    const env = {
      PULLCACHE_TLS_CERT: first.cert,
      PULLCACHE_TLS_KEY: first.key,
      PULLCACHE_TLS_CLIENT_CA: ca.cert,
      PULLCACHE_AUTH_ANONYMOUS: 'false',
    }
    const mirror = await fx.mirror({ env })
    const agentOf = async (c?: { cert: string; key: string }) =>
      new Agent({
        ca: caPem,
        ...(c === undefined ? {} : { cert: await readFile(c.cert), key: await readFile(c.key) }),
      })
    const signedIn = await agentOf(alice)
    const none = await agentOf()
    const forged = await agentOf(mallory)
    try {
      expect((await get(mirror.url, '/v2/', signedIn)).status).toBe(200)
      const line = mirror.logs.find((l) => l.event === 'request' && l.status === 200)
      expect(line).toMatchObject({ user: 'alice' })
      // 'optional': the handshake goes on, and the client is anonymous, which is off here.
      const anonymous = await get(mirror.url, '/v2/', none)
      expect(anonymous.status).toBe(401)
      expect(anonymous.body).toContain('a client certificate is required')
      expect((await get(mirror.url, '/v2/', forged)).status).toBe(401)
    } finally {
      for (const a of [signedIn, none, forged]) a.destroy()
    }
    await mirror.close()

    const strict = await fx.mirror({ env: { ...env, PULLCACHE_TLS_CLIENT_AUTH: 'require' } })
    const again = await agentOf(alice)
    const without = await agentOf()
    try {
      expect((await get(strict.url, '/v2/', again)).status).toBe(200)
      await expect(get(strict.url, '/v2/', without)).rejects.toThrow()
      expect(strict.logs.some((l) => l.event === 'tls.handshake_failed')).toBe(true)
    } finally {
      again.destroy()
      without.destroy()
    }
  })
})
