// biome-ignore-all lint/suspicious/noTemplateCurlyInString: Compose variables are the subject here
// `pullcache prefetch` warms a store through an in-process pullcache (or a running one with
// --server); a mirror started over that store then serves every pull with no upstream request.

import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { beforeAll, describe, expect, test } from 'vitest'
import { type AddedImage, type FakeUpstream, sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { runCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'

const LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
const MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'

interface MultiArch {
  digest: string
  amd64: AddedImage
  arm64: AddedImage
}

/** A Docker manifest list of two single-platform images, as Docker Hub serves official images. */
function addMultiArch(up: FakeUpstream, repo: string, tag: string): MultiArch {
  const amd64 = up.addImage(repo, `${tag}-amd64`, { layers: 2, layerBytes: 64 * 1024 })
  const arm64 = up.addImage(repo, `${tag}-arm64`, { layers: 2, layerBytes: 64 * 1024 })
  const entry = (i: AddedImage, platform: Record<string, string>) => ({
    mediaType: MANIFEST,
    size: i.manifest.length,
    digest: i.manifestDigest,
    platform,
  })
  const list = {
    schemaVersion: 2,
    mediaType: LIST,
    manifests: [
      entry(amd64, { architecture: 'amd64', os: 'linux' }),
      entry(arm64, { architecture: 'arm64', os: 'linux', variant: 'v8' }),
    ],
  }
  const digest = up.addManifest(repo, Buffer.from(JSON.stringify(list, null, 3)), LIST, tag)
  return { digest, amd64, arm64 }
}

const blobsOf = (i: AddedImage) => [i.configDigest, ...i.layers.map((l) => l.digest)]

describe('pullcache prefetch', () => {
  const fake = useFakeUpstream()
  let up: FakeUpstream
  let alpha: AddedImage
  let beta: AddedImage
  let multi: MultiArch
  let mirror: TestMirror | undefined

  beforeAll(async () => {
    up = fake.up
    alpha = up.addImage('library/alpha', '1', { layers: 3, layerBytes: 200 * 1024 })
    beta = up.addImage('team/beta', '2', { layers: 1 })
    multi = addMultiArch(up, 'library/multi', '1')
  })

  const prefetch = (dataDir: string, ...args: string[]) =>
    runCli(['prefetch', '--data-dir', dataDir, '--upstream', up.url, ...args])

  /** Pulls an image through `m` as a client would, checking every digest and the cache header. */
  async function pullAll(m: TestMirror, repo: string, ref: string, blobs: string[], manifests: string[]) {
    const accept = `${LIST}, ${MANIFEST}`
    const top = await m.get(`/v2/${repo}/manifests/${ref}`, { accept })
    expect(top.status).toBe(200)
    expect(top.headers['x-pullcache-cache']).toBe('hit')
    for (const d of manifests) {
      const res = await m.get(`/v2/${repo}/manifests/${d}`, { accept })
      expect(res.headers['x-pullcache-cache']).toBe('hit')
      expect(sha256(res.body)).toBe(d)
    }
    for (const d of blobs) {
      const res = await m.get(`/v2/${repo}/blobs/${d}`)
      expect(res.status).toBe(200)
      expect(res.headers['x-pullcache-cache']).toBe('hit')
      expect(sha256(res.body)).toBe(d)
    }
  }

  test('images from arguments are cached; others are skipped with exit 1; later pulls are all hits', async () => {
    const dataDir = await tmpRoot()
    const r = await prefetch(
      dataDir,
      'alpha:1',
      'docker.io/team/beta:2',
      'ghcr.io/x/y:z',
      'index.docker.io/library/alpha:1',
    )
    expect(r.code).toBe(1)
    expect(r.stderr).toContain('skipped ghcr.io/x/y:z')
    const lines = r.stdout.trim().split('\n')
    expect(lines[0]).toBe(
      `docker.io/library/alpha:1 ${alpha.manifestDigest} layers=3 bytes=${3 * 200 * 1024 + alpha.config.length} fetched`,
    )
    expect(lines[1]).toMatch(
      new RegExp(`^docker.io/team/beta:2 ${beta.manifestDigest} layers=1 bytes=\\d+ fetched$`),
    )
    expect(lines[2]).toMatch(/^prefetch: 2 of 2 images cached, 2 fetched .* 1 skipped$/)
    // The same image twice (alpha:1, index.docker.io/library/alpha:1) is fetched once.
    for (const d of [...blobsOf(alpha), ...blobsOf(beta)])
      expect(up.count('GET', `/blobs/${d}`, 'cdn')).toBe(1)

    up.reset()
    mirror = await fake.mirror({ dataDir })
    await pullAll(mirror, 'library/alpha', '1', blobsOf(alpha), [alpha.manifestDigest])
    await pullAll(mirror, 'team/beta', '2', blobsOf(beta), [beta.manifestDigest])
    expect(up.requests).toEqual([])
  })

  test('a multi-platform image with --platform linux/arm64 fetches only the arm64 manifest and blobs', async () => {
    const dataDir = await tmpRoot()
    const r = await prefetch(dataDir, '--platform', 'linux/arm64', 'multi:1')
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`docker.io/library/multi:1 ${multi.digest} platforms=linux/arm64/v8 layers=2`)
    for (const d of blobsOf(multi.arm64)) expect(up.count('GET', `/blobs/${d}`, 'cdn')).toBe(1)
    for (const d of blobsOf(multi.amd64)) expect(up.count('GET', `/blobs/${d}`, 'cdn')).toBe(0)
    expect(up.count('GET', `/v2/library/multi/manifests/${multi.amd64.manifestDigest}`)).toBe(0)

    up.reset()
    mirror = await fake.mirror({ dataDir })
    await pullAll(mirror, 'library/multi', '1', blobsOf(multi.arm64), [multi.arm64.manifestDigest])
    expect(up.requests).toEqual([])

    // A second run finds everything cached and asks upstream nothing; both platforms at once
    // then fetch only what amd64 adds.
    await mirror.close({ wipe: false })
    mirror = undefined
    const again = await prefetch(dataDir, '--platform', 'linux/arm64', 'multi:1')
    expect(again.code).toBe(0)
    expect(again.stdout).toMatch(/ cached\n/)
    expect(up.requests).toEqual([])
    const both = await prefetch(dataDir, '--platform', 'linux/amd64,linux/arm64', 'multi:1')
    expect(both.code).toBe(0)
    expect(both.stdout).toContain('platforms=linux/amd64,linux/arm64/v8 layers=4')
    for (const d of blobsOf(multi.amd64)) expect(up.count('GET', `/blobs/${d}`, 'cdn')).toBe(1)
    for (const d of blobsOf(multi.arm64)) expect(up.count('GET', `/blobs/${d}`, 'cdn')).toBe(0)
  })

  test('--file, --compose and --kubernetes through a running pullcache (--server)', async () => {
    const dir = await tmpRoot()
    mirror = await fake.mirror()
    await writeFile(join(dir, 'images.txt'), '# warm these\nalpha:1\n\n  team/beta:2   # the team image\n')
    await writeFile(join(dir, '.env'), 'BETA_TAG=2\n')
    await writeFile(
      join(dir, 'compose.yml'),
      [
        'services:',
        '  web:',
        '    image: "team/beta:${BETA_TAG}"',
        '  app:',
        '    build: .',
        '    image: team/app:dev',
        '  db:',
        '    image: ${DB_IMAGE:-alpha:1}',
      ].join('\n'),
    )
    await writeFile(
      join(dir, 'k8s.yaml'),
      [
        'apiVersion: apps/v1',
        'kind: Deployment',
        'metadata: {name: web}',
        'spec:',
        '  template:',
        '    spec:',
        '      initContainers: [{name: init, image: "team/beta:2"}]',
        '      containers: [{name: main, image: "multi:1"}]',
        '---',
        'apiVersion: v1',
        'kind: Service',
        'metadata: {name: web}',
        'spec: {ports: [{port: 80}]}',
      ].join('\n'),
    )
    const r = await runCli([
      'prefetch',
      '--server',
      mirror.url,
      '--file',
      join(dir, 'images.txt'),
      '--compose',
      join(dir, 'compose.yml'),
      '--kubernetes',
      join(dir, 'k8s.yaml'),
    ])
    expect(r.stderr).toContain('service app: built locally')
    expect(r.code).toBe(0)
    const refs = r.stdout
      .trim()
      .split('\n')
      .slice(0, -1)
      .map((l) => l.split(' ')[0])
    expect(refs).toEqual(['docker.io/library/alpha:1', 'docker.io/team/beta:2', 'docker.io/library/multi:1'])
    expect(r.stdout).toMatch(/prefetch: 3 of 3 images cached/)
    // The running mirror now has them.
    up.reset()
    await pullAll(mirror, 'library/multi', '1', blobsOf(multi.amd64), [multi.amd64.manifestDigest])
    expect(up.requests).toEqual([])
  })

  test('an image upstream does not have fails the run with exit 1, the others still get cached', async () => {
    const dataDir = await tmpRoot()
    const r = await prefetch(dataDir, 'ghost:1', 'alpha:1')
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/failed docker.io\/library\/ghost:1: .*404/)
    expect(r.stdout).toContain(`docker.io/library/alpha:1 ${alpha.manifestDigest}`)
    expect(r.stdout).toMatch(/1 of 2 images cached.* 1 failed/)
  })

  test('bad usage exits 2', async () => {
    const dataDir = await tmpRoot()
    expect((await prefetch(dataDir)).code).toBe(2)
    expect((await prefetch(dataDir, '--platform', 'amd64', 'alpha:1')).code).toBe(2)
    expect((await prefetch(dataDir, '--file', join(dataDir, 'missing.txt'))).code).toBe(2)
    const bad = join(dataDir, 'bad.yml')
    await writeFile(bad, 'services:\n  web: [unclosed\n')
    const yaml = await prefetch(dataDir, '--compose', bad)
    expect(yaml.code).toBe(2)
    expect(yaml.stderr).toContain('bad.yml')
    expect((await runCli(['prefetch', '--server', 'mirror.lan:5000', 'alpha'])).code).toBe(2)
    expect((await runCli(['prefetch', '--help'])).stdout).toContain('--kubernetes FILE')
  })
})
