// containerd's ctr pulling a private image through a mirror with client accounts, configured as the
// README tells operators to: hosts.toml gives the mirror's host a static `Authorization: Basic`
// header. Without that header ctr is an anonymous client and the mirror refuses the private
// repository; ctr then falls back to Docker Hub, unreachable here, and the pull fails.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSecretImage, startAccessMirror, writeHtpasswd } from './accounts.js'
import { type Containerd, startPrivateContainerd } from './containerd.js'
import type { TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import type { Pullcache } from './pullcache.js'
import { createSkopeo, expectedBlobDigests } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

const CLIENT = { username: 'node-7', password: 'node-pass-91c2be' }
const NS = 'pce2e-acc'

let work: string
let upstream: Upstream
let pullcache: Pullcache
let containerd: Containerd
let secret: TestImage

beforeAll(async () => {
  work = await makeTempDir('accctr')
  secret = await createSecretImage(join(work, 'images'), [40 * 1024, 8 * 1024])
  upstream = await startUpstream({ privateRepos: [secret.name] })
  const skopeo = await createSkopeo(join(work, 'skopeo'))
  await skopeo.push(secret, upstream.registry.hostPort, upstream.pusher)
  pullcache = await startAccessMirror(upstream, await writeHtpasswd(work, CLIENT))
  containerd = await startPrivateContainerd()
})

afterAll(async () => {
  await containerd?.close()
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

const ref = () => `docker.io/${secret.name}:${secret.tag}`
const basic = (user: string, password: string) =>
  `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`

describe('containerd (ctr) with credentials for the mirror in hosts.toml', () => {
  it('is refused the private image without an Authorization header', async () => {
    await containerd.setMirror(pullcache.url)
    upstream.proxy.reset()
    const mark = pullcache.mark()
    const result = await containerd.pull(ref(), { namespace: NS, platform: 'linux/amd64', timeoutMs: 60_000 })
    expect(result.code, `${result.stdout.slice(-2000)}\n${result.stderr.slice(-2000)}`).not.toBe(0)
    expect(await containerd.images(NS)).toEqual([])

    await pullcache.settle()
    const served = pullcache.accessLogSince(mark).filter((l) => l.path.startsWith(`/v2/${secret.name}/`))
    const log = served.map((l) => `${l.method} ${l.path} ${l.status}`).join('\n')
    expect(served.length, 'ctr asked the mirror').toBeGreaterThan(0)
    expect(
      served.every((l) => l.status === 401),
      log,
    ).toBe(true)
    expect(upstream.proxy.count({ repository: secret.name, kind: 'blob' }), upstream.proxy.describe()).toBe(0)
  })

  it('is refused with a wrong password in the header', async () => {
    await containerd.setMirror(pullcache.url, { Authorization: basic(CLIENT.username, 'not-the-password') })
    const mark = pullcache.mark()
    const result = await containerd.pull(ref(), { namespace: NS, platform: 'linux/amd64', timeoutMs: 60_000 })
    expect(result.code, result.stderr.slice(-2000)).not.toBe(0)
    await pullcache.settle()
    const served = pullcache.accessLogSince(mark).filter((l) => l.path.startsWith(`/v2/${secret.name}/`))
    expect(served.length).toBeGreaterThan(0)
    expect(served.every((l) => l.status === 401)).toBe(true)
    expect(
      pullcache.lines.slice(mark).some((l) => l.event === 'auth.failed' && l.user === CLIENT.username),
    ).toBe(true)
  })

  it('pulls the private image through the mirror with the Authorization header', async () => {
    await containerd.setMirror(pullcache.url, { Authorization: basic(CLIENT.username, CLIENT.password) })
    upstream.proxy.reset()
    const mark = pullcache.mark()
    const result = await containerd.pull(ref(), { namespace: NS, platform: 'linux/amd64' })
    expect(result.code, `${result.stdout.slice(-2000)}\n${result.stderr.slice(-2000)}`).toBe(0)
    const listed = (await containerd.images(NS)).find((i) => i.ref === ref())
    expect(listed?.digest).toBe(secret.top.digest)

    // Served by pullcache to the signed-in client: the tag and every blob, each fetched upstream
    // once with pullcache's own account.
    await pullcache.settle()
    const served = pullcache.accessLogSince(mark)
    const log = served.map((l) => `${l.method} ${l.path} ${l.status} ${String(l.user)}`).join('\n')
    expect(
      served.some(
        (l) =>
          l.path === `/v2/${secret.name}/manifests/${secret.tag}` &&
          l.status === 200 &&
          l.user === CLIENT.username,
      ),
      log,
    ).toBe(true)
    const blobs = expectedBlobDigests(secret)
    for (const digest of blobs) {
      const line = served.find((l) => l.method === 'GET' && l.path === `/v2/${secret.name}/blobs/${digest}`)
      expect(line?.status, log).toBe(200)
      expect(line?.user, log).toBe(CLIENT.username)
    }
    const downloads = upstream.proxy
      .filter({ kind: 'blob', method: 'GET', status: 'success', repository: secret.name })
      .map((r) => r.reference)
      .sort()
    expect(downloads, upstream.proxy.describe()).toEqual(blobs)

    // The header ctr sent stays with pullcache: not logged, not sent upstream.
    const output = pullcache.output()
    expect(output).not.toContain(CLIENT.password)
    expect(output).not.toContain(basic(CLIENT.username, CLIENT.password).slice(6))
    expect(upstream.proxy.requests.some((r) => r.authorization === 'basic')).toBe(false)
    expect(upstream.tokens.requests.some((r) => r.basicUser === CLIENT.username)).toBe(false)
  })
})
