// `pullcache verify` against a store a running mirror is using: a flipped byte, a deleted file,
// a file without a row and a manifest whose bytes went bad are all found; --repair fixes them so
// that a second verify is clean and the mirror fetches the quarantined blob again.

import { randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { beforeAll, describe, expect, test } from 'vitest'
import { type AddedImage, sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { runCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'

const REPO = 'library/verified'

function blobFile(dataDir: string, digest: string): string {
  const hex = digest.slice(7)
  return join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex)
}

describe('pullcache verify', () => {
  const fake = useFakeUpstream()
  let mirror: TestMirror
  let image: AddedImage

  beforeAll(async () => {
    image = fake.up.addImage(REPO, '1', { layers: 3, layerBytes: 300 * 1024 })
    mirror = await fake.fileMirror()
    expect((await mirror.get(`/v2/${REPO}/manifests/1`)).status).toBe(200)
    for (const d of [image.configDigest, ...image.layers.map((l) => l.digest)]) {
      expect((await mirror.get(`/v2/${REPO}/blobs/${d}`)).status).toBe(200)
    }
  })

  const verify = (...args: string[]) => runCli(['verify', '--data-dir', mirror.dataDir, ...args])

  test('a clean store: exit 0 and a summary', async () => {
    const r = await verify()
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/checked 4 blobs \(.*\) and 1 manifests .*: no problems/)
  })

  test('finds every kind of damage, repairs it, and the mirror fetches the blob again', async () => {
    const [corrupt, gone] = image.layers
    // A flipped byte in a committed blob.
    const path = blobFile(mirror.dataDir, corrupt!.digest)
    const bytes = await readFile(path)
    bytes[1000] = bytes[1000]! ^ 0xff
    await writeFile(path, bytes)
    // A file deleted behind the index's back.
    await rm(blobFile(mirror.dataDir, gone!.digest))
    // A valid file without a row (a commit whose index write was cut short).
    const orphan = randomBytes(5000)
    const orphanDigest = sha256(orphan)
    await mkdir(join(blobFile(mirror.dataDir, orphanDigest), '..'), { recursive: true })
    await writeFile(blobFile(mirror.dataDir, orphanDigest), orphan)
    // A manifest whose stored bytes no longer hash to its digest.
    const db = new Database(join(mirror.dataDir, 'index.db'))
    db.prepare('UPDATE manifests SET body = ? WHERE digest = ?').run(
      Buffer.from('{"schemaVersion":2,"tampered":true}'),
      image.manifestDigest,
    )
    // An index row that records the wrong size for a good file.
    db.prepare('UPDATE blobs SET size = size + 7 WHERE digest = ?').run(image.configDigest)
    db.close()

    const report = await verify()
    expect(report.code).toBe(1)
    expect(report.stdout).toContain(`corrupt blob ${corrupt!.digest}`)
    expect(report.stdout).toContain(`missing file ${gone!.digest}`)
    expect(report.stdout).toContain(`orphan file ${orphanDigest}`)
    expect(report.stdout).toContain(`corrupt manifest ${image.manifestDigest}`)
    expect(report.stdout).toContain(`size mismatch ${image.configDigest}`)
    expect(report.stdout).toMatch(/5 problems \(run with --repair to fix\)/)

    const json = await verify('--json')
    expect(json.code).toBe(1)
    const parsed = JSON.parse(json.stdout) as { ok: boolean; problems: { kind: string; digest: string }[] }
    expect(parsed.ok).toBe(false)
    expect(parsed.problems.map((p) => [p.kind, p.digest]).sort()).toEqual(
      [
        ['corrupt_blob', corrupt!.digest],
        ['missing_file', gone!.digest],
        ['orphan_file', orphanDigest],
        ['corrupt_manifest', image.manifestDigest],
        ['size_mismatch', image.configDigest],
      ].sort(),
    )
    // Only reporting: nothing moved.
    expect(await readFile(path)).toEqual(bytes)

    const repaired = await verify('--repair')
    expect(repaired.code).toBe(0)
    expect(repaired.stdout).toMatch(/5 problems, 5 repaired/)
    // The corrupt file is kept for inspection, byte for byte.
    const quarantined = await readdir(join(mirror.dataDir, 'quarantine'))
    expect(quarantined).toHaveLength(1)
    expect(quarantined[0]).toMatch(new RegExp(`^${corrupt!.digest.slice(7)}\\.`))
    expect(await readFile(join(mirror.dataDir, 'quarantine', quarantined[0]!))).toEqual(bytes)

    const again = await verify()
    expect(again.code).toBe(0)
    expect(again.stdout).toContain('no problems')

    // The running mirror fetches the quarantined and the missing blob again, verified.
    fake.up.reset()
    for (const layer of [corrupt!, gone!]) {
      const res = await mirror.get(`/v2/${REPO}/blobs/${layer.digest}`)
      expect(res.status).toBe(200)
      expect(res.headers['x-pullcache-cache']).toBe('miss')
      expect(sha256(res.body)).toBe(layer.digest)
      expect(fake.up.count('GET', `/blobs/${layer.digest}`, 'cdn')).toBe(1)
    }
    const manifest = await mirror.get(`/v2/${REPO}/manifests/${image.manifestDigest}`)
    expect(sha256(manifest.body)).toBe(image.manifestDigest)
    expect(await readFile(blobFile(mirror.dataDir, corrupt!.digest))).toEqual(Buffer.from(corrupt!.bytes))
    expect((await verify()).code).toBe(0)
  })

  test('usage and a data dir without a store', async () => {
    expect((await runCli(['verify', '--help'])).stdout).toContain('--repair')
    expect((await runCli(['verify', '--bogus'])).code).toBe(2)
    const empty = await runCli(['verify', '--data-dir', join(mirror.dataDir, 'nothing-here')])
    expect(empty.code).toBe(1)
    expect(empty.stderr).toContain('no pullcache store')
  })
})
