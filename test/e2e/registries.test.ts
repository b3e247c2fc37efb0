// One pullcache mirroring two registries, pulled by real clients configured the way the README's
// "Several registries" guide tells operators to:
//
//   docker.io  (root upstream)  a distribution registry with token auth, as Docker Hub has it
//   beta.test  (upstreams[0])   a distribution registry with Basic auth, as many company registries
//
// containerd's ctr has a hosts.toml per registry (it sends ?ns=<registry>), skopeo (podman, CRI-O)
// has registries.conf mirrors with a path prefix (/v2/<registry>/<name>/...), and dockerd only
// mirrors Docker Hub at the root. The same image is pushed to both registries, so its layers are
// fetched through both and must be stored once. Everything on beta.test needs its account, so
// only clients signed in to pullcache get it: containerd and skopeo sign in, dockerd (which
// cannot) pulls Docker Hub's public images. A registry pullcache does not list gets 404
// NAME_UNKNOWN and never reaches any upstream. `beta.test` and `gamma.test` do not resolve here,
// so a pull that succeeds was served by the mirror.
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { writeHtpasswd } from './accounts.js'
import { type Containerd, startPrivateContainerd } from './containerd.js'
import { type Dockerd, startDockerd } from './dockerd.js'
import { AMD64, createImage, manifestFor, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { type Creds, createSkopeo, layoutProblems, readLayout, type Skopeo } from './skopeo.js'
import { type BasicUpstream, startBasicUpstream, startUpstream, type Upstream } from './upstream.js'

const BETA = 'beta.test'
const BETA_ACCOUNT: Creds = { username: 'beta-robot', password: 'beta-secret-5e0c9a71' }
/** A client account of pullcache's own (auth.htpasswd). */
const NODE: Creds = { username: 'ci-node', password: 'node-secret-0b7d44e1' }
const NODE_AUTH = {
  Authorization: `Basic ${Buffer.from(`${NODE.username}:${NODE.password}`).toString('base64')}`,
}

let work: string
let hub: Upstream
let beta: BasicUpstream
let skopeo: Skopeo
let pullcache: Pullcache
/** On both registries, as library/shared:v1. */
let shared: TestImage
/** On beta.test only, as library/onlyb:v1. */
let onlyBeta: TestImage

beforeAll(async () => {
  work = await makeTempDir('registries')
  const images = join(work, 'images')
  shared = await createImage(images, {
    shortName: 'shared',
    tag: 'v1',
    format: 'docker',
    platforms: [AMD64],
    layerSizes: [96 * 1024, 12 * 1024],
  })
  onlyBeta = await createImage(images, {
    shortName: 'onlyb',
    tag: 'v1',
    format: 'oci',
    platforms: [AMD64],
    layerSizes: [40 * 1024],
  })
  hub = await startUpstream()
  beta = await startBasicUpstream(await writeHtpasswd(work, BETA_ACCOUNT))
  skopeo = await createSkopeo(join(work, 'skopeo'))
  await skopeo.push(shared, hub.registry.hostPort, hub.pusher)
  for (const image of [shared, onlyBeta]) await skopeo.push(image, beta.registry.hostPort, BETA_ACCOUNT)

  const passwordFile = join(work, 'beta-password')
  await writeFile(passwordFile, `${BETA_ACCOUNT.password}\n`, { mode: 0o600 })
  const configFile = join(work, 'pullcache.json')
  await writeFile(
    configFile,
    JSON.stringify({
      upstreams: [
        { host: BETA, url: beta.url, username: BETA_ACCOUNT.username, password_file: passwordFile },
      ],
    }),
  )
  const clients = join(work, 'clients')
  await mkdir(clients)
  pullcache = await startPullcache({
    upstream: hub.url,
    env: { PULLCACHE_CONFIG: configFile, PULLCACHE_AUTH_HTPASSWD: await writeHtpasswd(clients, NODE) },
  })
})

afterAll(async () => {
  await pullcache?.close()
  await beta?.close()
  await hub?.close()
  await removeDir(work)
})

/** How many files in the whole data dir are named by this digest's hex: one stored copy is 1. */
async function copiesOf(digest: string): Promise<number> {
  const hex = digest.slice('sha256:'.length)
  const entries = await readdir(pullcache.dataDir, { recursive: true, withFileTypes: true })
  return entries.filter((e) => e.isFile() && e.name.startsWith(hex)).length
}

describe('containerd (ctr) with a hosts.toml per registry', () => {
  let containerd: Containerd
  beforeAll(async () => {
    containerd = await startPrivateContainerd()
    await containerd.setMirror(pullcache.url, NODE_AUTH)
    await containerd.setMirror(pullcache.url, NODE_AUTH, undefined, BETA)
    await containerd.setMirror(pullcache.url, NODE_AUTH, undefined, 'gamma.test')
  })
  afterAll(async () => {
    await containerd?.close()
  })

  it('pulls from both registries through one pullcache, and stores a shared layer once', async () => {
    const pulls = [
      { ref: `docker.io/${shared.name}:v1`, image: shared },
      { ref: `${BETA}/${shared.name}:v1`, image: shared },
      { ref: `${BETA}/${onlyBeta.name}:v1`, image: onlyBeta },
    ]
    const mark = pullcache.mark()
    for (const [i, { ref, image }] of pulls.entries()) {
      const namespace = `pce2e-regs-${i}`
      const result = await containerd.pull(ref, { namespace, platform: 'linux/amd64' })
      expect(result.code, `${ref}\n${result.stdout.slice(-2000)}\n${result.stderr.slice(-2000)}`).toBe(0)
      expect((await containerd.images(namespace)).find((e) => e.ref === ref)?.digest).toBe(image.top.digest)
    }

    // Each registry was asked for its own images, with its own kind of credentials.
    expect(hub.proxy.count({ kind: 'manifest', repository: shared.name, status: 'success' })).toBeGreaterThan(
      0,
    )
    expect(hub.proxy.count({ repository: onlyBeta.name })).toBe(0)
    const betaManifests = beta.proxy.filter({ kind: 'manifest', status: 'success' })
    expect(betaManifests.map((r) => r.repository).sort()).toEqual(
      expect.arrayContaining([onlyBeta.name, shared.name]),
    )
    expect(
      betaManifests.every((r) => r.authorization === 'basic'),
      beta.proxy.describe(),
    ).toBe(true)

    // The same digest from two registries is one file in the store.
    await pullcache.stored(mark)
    for (const blob of shared.blobs) expect(await copiesOf(blob.digest), blob.digest).toBe(1)
  })

  it('gets 404 NAME_UNKNOWN from pullcache for a registry it does not list, and no upstream is asked', async () => {
    hub.proxy.reset()
    beta.proxy.reset()
    const mark = pullcache.mark()
    const result = await containerd.pull(`gamma.test/${shared.name}:v1`, {
      namespace: 'pce2e-regs-gamma',
      platform: 'linux/amd64',
    })
    expect(result.code).not.toBe(0)
    await pullcache.settle()
    const answered = pullcache.accessLogSince(mark).filter((l) => l.path.startsWith(`/v2/${shared.name}/`))
    expect(
      answered.length,
      pullcache
        .accessLogSince(mark)
        .map((l) => `${l.path} ${l.status}`)
        .join('\n'),
    ).toBeGreaterThan(0)
    expect(answered.every((l) => l.status === 404)).toBe(true)

    for (const path of [
      `/v2/${shared.name}/manifests/v1?ns=gamma.test`,
      `/v2/gamma.test/${shared.name}/manifests/v1`,
      `/v2/gamma.test/${shared.name}/blobs/${shared.blobs[0]?.digest}`,
    ]) {
      const res = await fetch(new URL(path, pullcache.url))
      expect(res.status, path).toBe(404)
      const body = (await res.json()) as { errors: { code: string; message: string }[] }
      expect(body.errors[0]?.code, path).toBe('NAME_UNKNOWN')
    }
    expect(hub.proxy.requests, hub.proxy.describe()).toEqual([])
    expect(beta.proxy.requests, beta.proxy.describe()).toEqual([])
  })
})

describe('skopeo (podman, CRI-O) with registries.conf mirrors by path prefix', () => {
  it('pulls from each registry under its prefix', async () => {
    const conf = [BETA, 'docker.io']
      .map((registry) =>
        [
          '[[registry]]',
          `prefix = "${registry}"`,
          `location = "${registry}"`,
          '[[registry.mirror]]',
          `location = "${pullcache.hostPort}/${registry}"`,
          'insecure = true',
          '',
        ].join('\n'),
      )
      .join('\n')
    await writeFile(join(work, 'skopeo', 'registries.conf'), conf)
    // containers/image looks up a mirror's credentials by the mirror's host in the auth file (what
    // `podman login mirror:5000` writes); --src-creds is only for the registry itself.
    const authFile = join(work, 'mirror-auth.json')
    const token = Buffer.from(`${NODE.username}:${NODE.password}`).toString('base64')
    await writeFile(authFile, JSON.stringify({ auths: { [pullcache.hostPort]: { auth: token } } }), {
      mode: 0o600,
    })
    const mark = pullcache.mark()
    for (const [ref, image] of [
      [`${BETA}/${onlyBeta.name}:v1`, onlyBeta],
      [`docker.io/${shared.name}:v1`, shared],
    ] as const) {
      const dest = join(work, `skopeo-${image.shortName}-${ref.split('/')[0]}`)
      await skopeo.run([
        'copy',
        '--quiet',
        '--src-tls-verify=false',
        '--authfile',
        authFile,
        `docker://${ref}`,
        `dir:${dest}`,
      ])
      const layout = await readLayout(dest)
      expect(layoutProblems(layout, image, 'amd64'), ref).toEqual([])
    }
    await pullcache.settle()
    const paths = pullcache.accessLogSince(mark).map((l) => `${l.method} ${l.path} ${l.status}`)
    expect(paths).toContain(`GET /v2/${BETA}/${onlyBeta.name}/manifests/v1 200`)
    expect(paths.some((p) => p.startsWith(`GET /v2/docker.io/${shared.name}/blobs/`))).toBe(true)
  })
})

describe('dockerd, which mirrors only Docker Hub', () => {
  let dockerd: Dockerd
  beforeAll(async () => {
    dockerd = await startDockerd({ mirror: pullcache.url })
  })
  afterAll(async () => {
    await dockerd?.close()
  })

  it('still pulls Docker Hub images through the root', async () => {
    const ref = `${shared.shortName}:v1`
    const result = await dockerd.pull(ref)
    expect(result.code, `${result.stderr}\n${dockerd.logs().slice(-20).join('\n')}`).toBe(0)
    expect((await dockerd.inspectImage(ref)).Id).toBe(manifestFor(shared).config.digest)
    expect(dockerd.logs().filter((l) => l.includes('Attempting next endpoint'))).toEqual([])
  })
})
