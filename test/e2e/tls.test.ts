// pullcache serving HTTPS with a certificate from a CA made in the test (openssl), to real clients
// configured the way the README tells operators to: skopeo with --src-cert-dir (the layout of
// /etc/containers/certs.d/<host:port>/), containerd's ctr with hosts.toml `ca` and `client`, and
// dockerd with certs.d/<host:port>/ca.crt and client.cert. A client certificate the CA signed signs its client in
// (the access log names its CN). A real SIGHUP puts a renewed certificate in place for new
// connections while a keep-alive connection opened before keeps working.
import { copyFile, mkdir, readFile } from 'node:fs/promises'
import type { IncomingMessage } from 'node:http'
import { Agent, request } from 'node:https'
import { join } from 'node:path'
import { connect, type TLSSocket } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { makeTestCa, type TestCa } from '../support/test-certs.js'
import { type Containerd, startPrivateContainerd } from './containerd.js'
import { type Dockerd, startDockerd, trustRegistryCa } from './dockerd.js'
import { AMD64, createImage, manifestFor, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { createSkopeo, expectedBlobDigests, layoutProblems, readLayout, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

const CLIENT_CN = 'ci-node-3'

let work: string
let ca: TestCa
let upstream: Upstream
let skopeo: Skopeo
let image: TestImage
let pullcache: Pullcache
/** The files pullcache reads: renewed in place by the SIGHUP test. */
let live: { cert: string; key: string }
let client: { cert: string; key: string }
/** The certificate pullcache starts with. */
let first: { cert: string; key: string }

beforeAll(async () => {
  work = await makeTempDir('tls')
  ca = await makeTestCa()
  first = await ca.server('first')
  client = await ca.client(CLIENT_CN)
  await mkdir(join(work, 'live'))
  live = { cert: join(work, 'live', 'tls.crt'), key: join(work, 'live', 'tls.key') }
  await copyFile(first.cert, live.cert)
  await copyFile(first.key, live.key)
  image = await createImage(join(work, 'images'), {
    shortName: 'tlsimg',
    tag: 'v1',
    format: 'docker',
    platforms: [AMD64],
    layerSizes: [48 * 1024, 8 * 1024],
  })
  upstream = await startUpstream()
  skopeo = await createSkopeo(join(work, 'skopeo'))
  await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
  pullcache = await startPullcache({
    upstream: upstream.url,
    ca: await readFile(ca.cert, 'utf8'),
    env: {
      PULLCACHE_TLS_CERT: live.cert,
      PULLCACHE_TLS_KEY: live.key,
      PULLCACHE_TLS_CLIENT_CA: ca.cert,
    },
  })
})

afterAll(async () => {
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

/** A skopeo cert dir as containers/image reads it: *.crt are CAs, a *.cert with its *.key a client. */
async function certDir(name: string, withClient: boolean): Promise<string> {
  const dir = join(work, 'certs.d', name)
  await mkdir(dir, { recursive: true })
  await copyFile(ca.cert, join(dir, 'ca.crt'))
  if (withClient) {
    await copyFile(client.cert, join(dir, 'client.cert'))
    await copyFile(client.key, join(dir, 'client.key'))
  }
  return dir
}

function skopeoCopy(dest: string, extra: string[]) {
  return skopeo.run([
    'copy',
    '--quiet',
    '--src-no-creds',
    ...extra,
    `docker://${pullcache.hostPort}/${image.name}:${image.tag}`,
    `dir:${dest}`,
  ])
}

describe('skopeo (containers/image: podman, CRI-O)', () => {
  it('refuses the certificate without the CA, pulls with it, and signs in with a client certificate', async () => {
    await expect(skopeoCopy(join(work, 'pull-0'), [])).rejects.toThrow(/x509|certificate/)

    const mark = pullcache.mark()
    await skopeoCopy(join(work, 'pull-1'), ['--src-cert-dir', await certDir('ca-only', false)])
    expect(layoutProblems(await readLayout(join(work, 'pull-1')), image, 'amd64')).toEqual([])
    await pullcache.settle()
    const anonymous = pullcache.accessLogSince(mark).filter((l) => l.path.startsWith(`/v2/${image.name}/`))
    expect(anonymous.length).toBeGreaterThan(0)
    expect(anonymous.every((l) => l.status === 200 && l.user === undefined)).toBe(true)

    const signed = pullcache.mark()
    await skopeoCopy(join(work, 'pull-2'), ['--src-cert-dir', await certDir('with-client', true)])
    await pullcache.settle()
    const lines = pullcache.accessLogSince(signed).filter((l) => l.path.startsWith(`/v2/${image.name}/`))
    expect(lines.length).toBeGreaterThan(0)
    expect(lines.every((l) => l.status === 200 && l.user === CLIENT_CN)).toBe(true)
  })
})

describe('containerd (ctr) with hosts.toml ca and client', () => {
  let containerd: Containerd
  beforeAll(async () => {
    containerd = await startPrivateContainerd()
  })
  afterAll(async () => {
    await containerd?.close()
  })

  it('pulls through the HTTPS mirror, signed in by its client certificate', async () => {
    await containerd.setMirror(pullcache.url, {}, { ca: ca.cert, client })
    const mark = pullcache.mark()
    const ref = `docker.io/${image.name}:${image.tag}`
    const result = await containerd.pull(ref, { namespace: 'pce2e-tls', platform: 'linux/amd64' })
    expect(result.code, `${result.stdout.slice(-2000)}\n${result.stderr.slice(-2000)}`).toBe(0)
    expect((await containerd.images('pce2e-tls')).find((i) => i.ref === ref)?.digest).toBe(image.top.digest)
    await pullcache.settle()
    const served = pullcache.accessLogSince(mark)
    for (const digest of expectedBlobDigests(image)) {
      const line = served.find((l) => l.method === 'GET' && l.path === `/v2/${image.name}/blobs/${digest}`)
      expect(line, served.map((l) => `${l.method} ${l.path} ${l.status}`).join('\n')).toMatchObject({
        status: 200,
        user: CLIENT_CN,
      })
    }
  })
})

/** GET /v2/ on `agent`: the status, the certificate's CN and whether the socket was reused. */
function getV2(agent: Agent): Promise<{ status: number; cn: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL('/v2/', pullcache.url), { agent }, (res: IncomingMessage) => {
      const cn = String((res.socket as TLSSocket).getPeerCertificate().subject.CN)
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode ?? 0, cn, reused: req.reusedSocket }))
    })
    req.on('error', reject)
    req.end()
  })
}

describe('a renewed certificate and SIGHUP', () => {
  it('is served to new connections while a keep-alive connection goes on', async () => {
    const caPem = await readFile(ca.cert)
    const agent = new Agent({ ca: caPem, keepAlive: true, maxSockets: 1 })
    try {
      expect(await getV2(agent)).toMatchObject({ status: 200, cn: 'first' })
      const second = await ca.server('second')
      await copyFile(second.cert, live.cert)
      await copyFile(second.key, live.key)
      const mark = pullcache.mark()
      pullcache.signal('SIGHUP')
      await pullcache.waitForEvent('config.reloaded', mark, (l) => (l.changed as string[]).includes('tls'))
      expect(pullcache.lines.slice(mark).find((l) => l.event === 'tls.loaded')).toMatchObject({
        subject: 'CN=second',
      })

      const { hostname, port } = new URL(pullcache.url)
      const handshakeCn = () =>
        new Promise<string>((resolve, reject) => {
          const socket = connect({ host: hostname, port: Number(port), ca: caPem }, () => {
            resolve(String(socket.getPeerCertificate().subject.CN))
            socket.end()
          })
          socket.on('error', reject)
        })
      expect(await handshakeCn()).toBe('second')
      expect(await getV2(agent)).toEqual({ status: 200, cn: 'first', reused: true })
      // And a real client gets the new one, trusting the same CA.
      await skopeoCopy(join(work, 'pull-3'), ['--src-cert-dir', await certDir('after-reload', false)])

      // A renewal gone wrong (the old key with the new certificate): the reload is refused with
      // the reason, and the certificate in force stays.
      await copyFile(first.key, live.key)
      const broken = pullcache.mark()
      pullcache.signal('SIGHUP')
      const failed = await pullcache.waitForEvent('config.reload_failed', broken)
      expect(String(failed.error)).toContain(`tls.key: ${live.key} is not the key of the certificate`)
      expect(await handshakeCn()).toBe('second')
      await copyFile(second.key, live.key)

      // No private key material in anything pullcache wrote.
      for (const key of [first.key, second.key]) {
        const keyLine = (await readFile(key, 'utf8')).split('\n')[1]!
        expect(pullcache.output()).not.toContain(keyLine)
      }
    } finally {
      agent.destroy()
    }
  })
})

describe('dockerd with certs.d/<host:port>/ca.crt and client.cert', () => {
  let mirror: Pullcache
  let dockerd: Dockerd
  let untrust: (() => Promise<void>) | undefined
  beforeAll(async () => {
    // On [::1]: dockerd never verifies (nor reads certs.d for) 127.0.0.0/8, see dockerd.ts.
    mirror = await startPullcache({
      upstream: upstream.url,
      ca: await readFile(ca.cert, 'utf8'),
      env: {
        PULLCACHE_LISTEN: '[::1]:0',
        PULLCACHE_TLS_CERT: live.cert,
        PULLCACHE_TLS_KEY: live.key,
        PULLCACHE_TLS_CLIENT_CA: ca.cert,
      },
    })
    dockerd = await startDockerd({ mirror: mirror.url })
  })
  afterAll(async () => {
    await untrust?.()
    await dockerd?.close()
    await mirror?.close()
  })

  it('does not trust the mirror without the CA, and pulls through it with the CA and a client certificate', async () => {
    const ref = `${image.shortName}:${image.tag}`
    const refused = await dockerd.pull(ref, { timeoutMs: 60_000 })
    expect(refused.code).not.toBe(0)
    expect(dockerd.logs().join('\n')).toMatch(/x509|certificate signed by unknown authority/)

    untrust = await trustRegistryCa(mirror.hostPort, ca.cert, client)
    const mark = mirror.mark()
    const result = await dockerd.pull(ref)
    expect(result.code, `${result.stderr}\n${dockerd.logs().slice(-20).join('\n')}`).toBe(0)
    expect((await dockerd.inspectImage(ref)).Id).toBe(manifestFor(image).config.digest)
    await mirror.settle()
    const served = mirror.accessLogSince(mark)
    for (const blob of manifestFor(image).layers) {
      const line = served.find(
        (l) => l.method === 'GET' && l.path === `/v2/${image.name}/blobs/${blob.digest}`,
      )
      expect(line).toMatchObject({ status: 200, user: CLIENT_CN })
    }
  })
})
