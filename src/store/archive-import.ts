// Reading an archive into the store (the format is in archive.ts). Nothing in the file is
// trusted: manifests and blobs are hashed as they stream in, blobs go in through the store's
// verified writer, what an image needs comes from its verified manifest bytes, and an image is
// recorded (manifests, then its tag) only once the whole archive was read and all of it verified.

import { createHash } from 'node:crypto'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { extract as tarExtract } from 'tar-stream'
import { INDEX_TYPES, isDigest, MAX_MANIFEST_BYTES, manifestRefs, sha256 } from '../oci.js'
import {
  ArchiveError,
  type ArchiveImage,
  type ArchiveIndex,
  INDEX_ENTRY,
  MAX_INDEX_BYTES,
  parseIndex,
} from './archive.js'
import { BlobMismatch } from './blob-storage.js'
import type { Store } from './store.js'

export interface ImportOptions {
  /** Record tags under this registry instead of the archive's. */
  registry?: string
  now?: number
  onProgress?: (bytes: number) => void
}

export interface ImportReport {
  archiveRegistry: string
  /** The registry the tags were recorded under. */
  registry: string
  imported: { label: string; digest: string }[]
  refused: { label: string; reasons: string[] }[]
  blobs: { added: number; present: number; bytes: number }
  manifests: { recorded: number }
  /** Entries that were not what the archive's index said: bad digests, sizes, unknown names. */
  problems: string[]
}

export async function importArchive(
  input: Readable,
  store: Store,
  opts: ImportOptions = {},
): Promise<ImportReport> {
  const index = store.index
  // Not a server's start: that empties tmp/, which may hold a running server's fills.
  await store.blobs.prepare()
  const extract = tarExtract()
  const reading = pipeline(input, extract)
  reading.catch(() => {}) // the iteration below sees the same failure

  let archive: ArchiveIndex | undefined
  const expectedManifests = new Map<string, { media_type: string; size: number }>()
  const expectedBlobs = new Map<string, number>()
  const manifests = new Map<string, Buffer>() // verified bytes
  const goodBlobs = new Set<string>()
  const bad = new Map<string, string>() // digest -> why
  const report: ImportReport = {
    archiveRegistry: '',
    registry: '',
    imported: [],
    refused: [],
    blobs: { added: 0, present: 0, bytes: 0 },
    manifests: { recorded: 0 },
    problems: [],
  }

  try {
    for await (const entry of extract) {
      const name = entry.header.name
      const size = entry.header.size ?? 0
      if (archive === undefined) {
        if (name !== INDEX_ENTRY)
          throw new ArchiveError(`not a pullcache archive (first entry is ${JSON.stringify(name)})`)
        archive = parseIndex(await readAll(entry, MAX_INDEX_BYTES))
        report.archiveRegistry = archive.registry
        for (const m of archive.manifests) expectedManifests.set(m.digest, m)
        for (const b of archive.blobs) expectedBlobs.set(b.digest, b.size)
        continue
      }
      const m = /^(manifests|blobs)\/sha256\/([0-9a-f]{64})$/.exec(name)
      const d = m ? `sha256:${m[2]}` : ''
      if (!m || (entry.header.type ?? 'file') !== 'file') {
        report.problems.push(`unexpected entry ${JSON.stringify(name)}; ignored`)
        entry.resume()
        continue
      }
      if (m[1] === 'manifests') {
        const expected = expectedManifests.get(d)
        if (expected === undefined || size !== expected.size || size > MAX_MANIFEST_BYTES) {
          const why =
            expected === undefined
              ? 'not listed in the archive index'
              : `${size} bytes, listed as ${expected.size}`
          fail(d, `manifest ${d}: ${why}`)
          entry.resume()
          continue
        }
        const body = await readAll(entry, MAX_MANIFEST_BYTES)
        const actual = sha256(body)
        if (actual !== d) fail(d, `manifest ${d}: its bytes hash to ${actual}`)
        else manifests.set(d, body)
        continue
      }
      const expected = expectedBlobs.get(d)
      if (expected === undefined || size !== expected) {
        const why =
          expected === undefined ? 'not listed in the archive index' : `${size} bytes, listed as ${expected}`
        fail(d, `blob ${d}: ${why}`)
        entry.resume()
        continue
      }
      const outcome = await importBlob(entry, d, size, store, opts.onProgress)
      if (outcome.error !== undefined) fail(d, outcome.error)
      else {
        goodBlobs.add(d)
        if (outcome.added) {
          report.blobs.added++
          report.blobs.bytes += size
        } else report.blobs.present++
      }
    }
    await reading
  } catch (err) {
    extract.destroy()
    if (err instanceof ArchiveError) throw err
    // Whatever verified before this point stays in the store (it is valid content), but no
    // image is recorded: its tags are only written once the whole archive has been read.
    throw new ArchiveError(`import stopped: ${(err as Error).message}`, { cause: err })
  }
  if (archive === undefined) throw new ArchiveError('not a pullcache archive (empty)')

  const registry = opts.registry ?? archive.registry
  report.registry = registry
  const now = opts.now ?? Date.now()
  const recorded = new Set<string>()
  for (const image of archive.images) {
    const label = image.repo === null ? image.digest : `${image.repo}:${image.tag ?? image.digest}`
    const reasons = await checkImage(image, expectedManifests, manifests, goodBlobs, bad, store)
    if (reasons.length > 0) {
      report.refused.push({ label, reasons })
      continue
    }
    // Children before their index, manifests before the tag: a reader never finds a tag whose
    // manifest is not there yet.
    for (const d of [...image.manifests].reverse()) {
      const body = manifests.get(d)
      if (body === undefined || recorded.has(d)) continue
      index.addManifest(d, expectedManifests.get(d)!.media_type, body, manifestRefs(body), now)
      recorded.add(d)
      if (image.repo !== null) index.link(registry, image.repo, d, 'manifest')
    }
    if (image.repo !== null) {
      // Whoever imports an archive vouches for serving it: its repositories count as public for
      // anonymous clients (repo_access 'assumed') until an upstream account makes that worth a
      // check. A repository recorded already keeps its answer.
      if (index.getRepoAccess(registry, image.repo) === undefined)
        index.setRepoAccess(registry, image.repo, 'assumed', now)
      for (const d of image.blobs) index.link(registry, image.repo, d, 'blob')
      if (image.tag !== null)
        index.setTag(registry, image.repo, image.tag, image.digest, image.media_type, now)
    }
    report.imported.push({ label, digest: image.digest })
  }
  report.manifests.recorded = recorded.size
  for (const why of bad.values()) report.problems.push(why)
  return report

  function fail(d: string, why: string): void {
    if (!bad.has(d)) bad.set(d, why)
  }
}

/** Why an image cannot be recorded; empty when all it needs verified or was already stored. */
async function checkImage(
  image: ArchiveImage,
  expectedManifests: Map<string, { media_type: string; size: number }>,
  manifests: Map<string, Buffer>,
  goodBlobs: Set<string>,
  bad: Map<string, string>,
  store: Store,
): Promise<string[]> {
  const index = store.index
  const reasons: string[] = []
  const bodyOf = (d: string): Buffer | undefined => manifests.get(d) ?? index.getManifest(d)?.body
  const top = bodyOf(image.digest)
  if (bad.has(image.digest) || top === undefined) {
    return [bad.get(image.digest) ?? `manifest ${image.digest} is not in the archive`]
  }
  if (
    !image.manifests.includes(image.digest) ||
    expectedManifests.get(image.digest)?.media_type !== image.media_type
  ) {
    return [`the archive index lists ${image.digest} inconsistently`]
  }
  // What the image needs comes from its verified bytes: the index's children that came along,
  // and every config and layer of each platform manifest.
  const platformManifests: { digest: string; body: Buffer }[] = []
  if (INDEX_TYPES.has(image.media_type)) {
    for (const ref of manifestRefs(top)) {
      if (!image.manifests.includes(ref.child)) continue // a platform never pulled at the source
      const body = bodyOf(ref.child)
      if (bad.has(ref.child) || body === undefined) {
        reasons.push(bad.get(ref.child) ?? `manifest ${ref.child} is not in the archive`)
        continue
      }
      platformManifests.push({ digest: ref.child, body })
    }
  } else {
    platformManifests.push({ digest: image.digest, body: top })
  }
  for (const m of platformManifests) {
    for (const ref of manifestRefs(m.body)) {
      if (bad.has(ref.child)) reasons.push(bad.get(ref.child)!)
      else if (goodBlobs.has(ref.child)) continue
      else if (
        !isDigest(ref.child) ||
        index.getBlob(ref.child) === undefined ||
        (await store.blobs.stat(ref.child)) === undefined
      ) {
        reasons.push(`blob ${ref.child} is not in the archive`)
      }
    }
  }
  return reasons
}

/**
 * One blob entry into the store through its verified writer: hashed and counted as it streams
 * in, committed (file, then row) only when it matches. A blob the store already holds is still
 * hashed (the entry must be read anyway) so that a tampered archive is refused whatever the
 * store has.
 */
async function importBlob(
  entry: AsyncIterable<unknown>,
  digest: string,
  size: number,
  store: Store,
  onProgress: ((bytes: number) => void) | undefined,
): Promise<{ added: boolean; error?: string }> {
  if ((await store.sizeOf(digest)) === size) {
    const hash = createHash('sha256')
    for await (const chunk of entry) {
      hash.update(chunk as Buffer)
      onProgress?.((chunk as Buffer).length)
    }
    const actual = `sha256:${hash.digest('hex')}`
    return actual === digest
      ? { added: false }
      : { added: false, error: `blob ${digest}: its bytes hash to ${actual}` }
  }
  const writer = await store.write(digest, size)
  try {
    for await (const chunk of entry) {
      writer.write(chunk as Buffer)
      await writer.flush()
      onProgress?.((chunk as Buffer).length)
    }
    await writer.commit()
    return { added: true }
  } catch (err) {
    await writer.abort()
    if (!(err instanceof BlobMismatch)) throw err
    return { added: false, error: `blob ${digest}: its ${err.received} bytes hash to ${err.actual}` }
  } finally {
    await writer.close().catch(() => {})
  }
}

async function readAll(entry: AsyncIterable<unknown>, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const chunk of entry) {
    n += (chunk as Buffer).length
    if (n > limit) throw new ArchiveError(`an archive entry is larger than ${limit} bytes`)
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}
