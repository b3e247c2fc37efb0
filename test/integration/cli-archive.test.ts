// `pullcache export` and `pullcache import`: cached images carried to a pullcache that cannot
// reach upstream, every digest intact, and a tampered archive refused.

import { existsSync } from 'node:fs'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { type AddedImage, sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { runCli } from '../support/run-cli.js'
import { startMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'

const LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
const MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
const blobsOf = (i: AddedImage) => [i.configDigest, ...i.layers.map((l) => l.digest)]

function blobFile(dataDir: string, digest: string): string {
  const hex = digest.slice(7)
  return join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex)
}

/** Upstream down: every connection is counted and reset at once. */
async function deadUpstream(port: number): Promise<{ server: Server; connections: number }> {
  const state = { server: createServer(), connections: 0 }
  state.server.on('connection', (socket) => {
    state.connections++
    socket.destroy()
  })
  await new Promise<void>((resolve, reject) => {
    state.server.once('error', reject)
    state.server.listen(port, '127.0.0.1', () => resolve())
  })
  return state
}

describe('pullcache export and import', () => {
  const fake = useFakeUpstream()
  let upstreamUrl: string
  let alpha: AddedImage
  let amd64: AddedImage
  let arm64: AddedImage
  let listDigest: string
  let work: string
  let archive: string

  beforeAll(async () => {
    const up = fake.up
    upstreamUrl = up.url
    alpha = up.addImage('library/alpha', '3.20', { layers: 3, layerBytes: 256 * 1024 })
    amd64 = up.addImage('team/multi', 'amd64', { layers: 2 })
    arm64 = up.addImage('team/multi', 'arm64', { layers: 2 })
    const list = {
      schemaVersion: 2,
      mediaType: LIST,
      manifests: [
        {
          mediaType: MANIFEST,
          size: amd64.manifest.length,
          digest: amd64.manifestDigest,
          platform: { architecture: 'amd64', os: 'linux' },
        },
        {
          mediaType: MANIFEST,
          size: arm64.manifest.length,
          digest: arm64.manifestDigest,
          platform: { architecture: 'arm64', os: 'linux' },
        },
      ],
    }
    listDigest = up.addManifest('team/multi', Buffer.from(JSON.stringify(list)), LIST, '1')
    work = await tmpRoot()
    archive = join(work, 'images.tar')
  })
  afterAll(async () => {
    // The stores and archives of every test live in work/ (the last test reuses the first's).
    await rm(work, { recursive: true, force: true })
  })

  test('export what is cached, wipe, import, and pull everything with upstream down', async () => {
    const source = join(work, 'source')
    const warmed = await runCli([
      'prefetch',
      '--data-dir',
      source,
      '--upstream',
      upstreamUrl,
      '--platform',
      'linux/amd64',
      'alpha:3.20',
      'team/multi:1',
    ])
    expect(warmed.code, warmed.stderr).toBe(0)

    // Not cached: an error that names what is missing, and no file.
    const missing = await runCli([
      'export',
      join(work, 'nope.tar'),
      '--data-dir',
      source,
      '--upstream',
      upstreamUrl,
      'alpha:3.20',
      'alpha:edge',
    ])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toContain('docker.io/library/alpha:edge: tag edge is not cached')
    expect(existsSync(join(work, 'nope.tar'))).toBe(false)

    const exported = await runCli([
      'export',
      archive,
      '--data-dir',
      source,
      '--upstream',
      upstreamUrl,
      'alpha:3.20',
      'team/multi:1',
    ])
    expect(exported.code, exported.stderr).toBe(0)
    expect(exported.stdout).toContain(`exported library/alpha:3.20 ${alpha.manifestDigest}`)
    expect(exported.stdout).toContain(`exported team/multi:1 ${listDigest}`)
    // Only amd64 was pulled, so only amd64 is in the archive, and the note says so.
    expect(exported.stderr).toContain('linux/arm64')
    expect(exported.stdout).toMatch(/wrote .*images.tar: 2 images, 3 manifests, 7 blobs/)

    // The source goes away, and so does upstream: nothing answers on its port from here on,
    // and anything that still tries to connect is counted and cut off.
    await rm(source, { recursive: true, force: true })
    // Upstream down for good: the port answers, but every connection is cut and counted.
    await fake.up.close()
    const down = await deadUpstream(Number(new URL(upstreamUrl).port))

    const target = join(work, 'target')
    const imported = await runCli(['import', archive, '--data-dir', target, '--upstream', upstreamUrl])
    expect(imported.code, imported.stderr).toBe(0)
    expect(imported.stdout).toContain('import: 2 of 2 images')
    expect(imported.stdout).toContain('7 blobs added')

    const mirror = await startMirror({ upstream: upstreamUrl, dataDir: target })
    try {
      const accept = `${LIST}, ${MANIFEST}`
      const pulls: [string, string, string[], string[]][] = [
        ['library/alpha', '3.20', [alpha.manifestDigest], blobsOf(alpha)],
        ['team/multi', '1', [listDigest, amd64.manifestDigest], blobsOf(amd64)],
      ]
      for (const [repo, tag, manifests, blobs] of pulls) {
        const top = await mirror.get(`/v2/${repo}/manifests/${tag}`, { accept })
        expect(top.status).toBe(200)
        expect(top.headers['x-pullcache-cache']).toBe('hit')
        expect(sha256(top.body)).toBe(manifests[0])
        for (const d of manifests) {
          const res = await mirror.get(`/v2/${repo}/manifests/${d}`, { accept })
          expect(res.headers['x-pullcache-cache']).toBe('hit')
          expect(sha256(res.body)).toBe(d)
        }
        for (const d of blobs) {
          const res = await mirror.get(`/v2/${repo}/blobs/${d}`)
          expect(res.status).toBe(200)
          expect(res.headers['x-pullcache-cache']).toBe('hit')
          expect(sha256(res.body)).toBe(d)
        }
      }
      // An old client (no index in Accept) gets the amd64 manifest from the imported list.
      const old = await mirror.get('/v2/team/multi/manifests/1', { accept: MANIFEST })
      expect(sha256(old.body)).toBe(amd64.manifestDigest)
      // Nothing was asked of upstream: not one connection was even tried.
      expect(down.connections).toBe(0)
    } finally {
      await mirror.close({ wipe: false })
      await new Promise((resolve) => down.server.close(resolve))
    }
    const verified = await runCli(['verify', '--data-dir', target])
    expect(verified.code, verified.stdout).toBe(0)

    // Importing the same archive again adds nothing and still succeeds.
    const again = await runCli(['import', archive, '--data-dir', target, '--upstream', upstreamUrl])
    expect(again.code).toBe(0)
    expect(again.stdout).toContain('0 blobs added')
    expect(again.stdout).toContain('7 already present')
  })

  test('a tampered archive is refused: the image is not recorded and the bad blob is not stored', async () => {
    const bytes = await readFile(archive)
    // Flip a byte inside the data of one of alpha's layers.
    const layer = alpha.layers[1]!.digest
    const header = bytes.indexOf(Buffer.from(`blobs/sha256/${layer.slice(7)}`))
    expect(header).toBeGreaterThan(0)
    bytes[header + 512 + 4096] = bytes[header + 512 + 4096]! ^ 0x01
    const tampered = join(work, 'tampered.tar')
    await writeFile(tampered, bytes)

    const target = join(work, 'tampered-target')
    const r = await runCli(['import', tampered, '--data-dir', target, '--upstream', upstreamUrl])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`refused library/alpha:3.20: blob ${layer}: its`)
    // The other image is intact and imported.
    expect(r.stdout).toContain(`imported team/multi:1 ${listDigest}`)
    expect(existsSync(blobFile(target, layer))).toBe(false)

    const mirror = await startMirror({ upstream: upstreamUrl, dataDir: target })
    try {
      expect((await mirror.get('/v2/library/alpha/manifests/3.20')).status).not.toBe(200)
      expect((await mirror.get('/v2/team/multi/manifests/1', { accept: LIST })).status).toBe(200)
    } finally {
      await mirror.close()
    }

    // Something that is not an archive at all.
    const junk = join(work, 'junk.tar')
    await writeFile(junk, Buffer.alloc(4096, 7))
    const notArchive = await runCli(['import', junk, '--data-dir', join(work, 'junk-target')])
    expect(notArchive.code).toBe(1)
    // A truncated archive: nothing recorded.
    const truncated = join(work, 'truncated.tar')
    await writeFile(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)))
    const cut = await runCli(['import', truncated, '--data-dir', join(work, 'cut-target')])
    expect(cut.code).toBe(1)
  })

  test('--all exports every complete image; usage errors exit 2', async () => {
    const target = join(work, 'target')
    const all = join(work, 'all.tar')
    const r = await runCli(['export', all, '--all', '--data-dir', target, '--upstream', upstreamUrl])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/wrote .*all.tar: 2 images, 3 manifests, 7 blobs/)

    expect((await runCli(['export', '--data-dir', target])).code).toBe(2)
    expect((await runCli(['export', all, 'alpha:3.20', '--all', '--data-dir', target])).code).toBe(2)
    expect((await runCli(['import', '--data-dir', target])).code).toBe(2)
    expect((await runCli(['import', join(work, 'missing.tar'), '--data-dir', target])).code).toBe(2)
    expect((await runCli(['export', '--help'])).stdout).toContain('--all')
    expect((await runCli(['import', '--help'])).stdout).toContain('--registry')
  })
})
