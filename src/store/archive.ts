// Moving cached images to an air-gapped pullcache as one file: an uncompressed tar (layers are
// compressed already) laid out as
//
//   pullcache-archive.json     first, so an importer knows what to expect before any bytes:
//                              format, version, upstream registry, images (registry, repo,
//                              tag -> digest, media type, their manifests and blobs), and the
//                              digest, size (and media type) of every manifest and blob below
//   manifests/sha256/<hex>     each manifest's exact bytes
//   blobs/sha256/<hex>         each config and layer blob
//
// Export reads only what the store holds, and hashes every blob as it copies it, so a store
// corrupted on disk cannot produce an archive. Import trusts nothing in the file: each manifest
// and blob is hashed as it streams in; a blob goes in through the store's verified writer (the
// fill's too: hashed, size-checked, fsynced, renamed, then its row); what an image needs is worked out from its verified
// manifest bytes, not from the archive's lists; and an image is recorded (manifests, then its
// tag) only when all of it verified. Nothing is ever held in memory but manifests, which are
// small and live in the index anyway.

import { createHash, randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { open, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { extract as tarExtract, pack as tarPack } from 'tar-stream'
import { z } from 'zod'
import { INDEX_TYPES, isDigest, isTag, MAX_MANIFEST_BYTES, manifestRefs, REPO_NAME, sha256 } from '../oci.js'
import { BlobMismatch } from './blob-storage.js'
import type { IndexDb } from './index-db.js'
import type { Store } from './store.js'

export const ARCHIVE_FORMAT = 'pullcache-archive'
export const ARCHIVE_VERSION = 1
const INDEX_ENTRY = 'pullcache-archive.json'
const MAX_INDEX_BYTES = 256 * 1024 * 1024

const digest = z.string().refine(isDigest, 'not a sha256 digest')
const mediaType = z.string().regex(/^[\w.+-]+\/[\w.+-]+$/, 'not a media type')
const repoName = z.string().regex(REPO_NAME)

const imageSchema = z.strictObject({
  registry: z.string().min(1),
  /** Null for an image cached by digest only. */
  repo: repoName.nullable(),
  tag: z.string().refine(isTag, 'not a tag').nullable(),
  digest,
  media_type: mediaType,
  manifests: z.array(digest),
  blobs: z.array(digest),
})

const indexSchema = z.strictObject({
  format: z.literal(ARCHIVE_FORMAT),
  version: z.literal(ARCHIVE_VERSION),
  created: z.string(),
  registry: z.string().min(1),
  images: z.array(imageSchema),
  manifests: z.array(z.strictObject({ digest, media_type: mediaType, size: z.number().int().min(0) })),
  blobs: z.array(z.strictObject({ digest, size: z.number().int().min(0) })),
})

export type ArchiveImage = z.infer<typeof imageSchema>
export type ArchiveIndex = z.infer<typeof indexSchema>

/** The archive is not something import can read at all. */
export class ArchiveError extends Error {
  readonly code = 'ARCHIVE_FAILED'
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts)
    this.name = 'ArchiveError'
  }
}

// --- export ----------------------------------------------------------------------------------

export interface ImageRequest {
  repo: string
  tag: string | null
  digest: string | null
  /** How the user named it, for messages. */
  label: string
}

export interface ExportPlan {
  index: ArchiveIndex
  /** Requested images that are not complete in the store, with what is missing. */
  incomplete: { label: string; missing: string[] }[]
  /** Platforms of an index that were never pulled, and so are not in the archive. */
  notes: string[]
}

/**
 * Works out what an archive of `requests` holds, from the index and the files. `'all'` is every
 * cached tag of `registry` and every other cached image pulled by digest, each if complete.
 */
export async function planExport(
  store: Store,
  registry: string,
  requests: ImageRequest[] | 'all',
): Promise<ExportPlan> {
  const index = store.index
  const plan: ExportPlan = {
    index: {
      format: ARCHIVE_FORMAT,
      version: ARCHIVE_VERSION,
      created: new Date().toISOString(),
      registry,
      images: [],
      manifests: [],
      blobs: [],
    },
    incomplete: [],
    notes: [],
  }
  const manifests = new Map<string, { media_type: string; size: number }>()
  const blobs = new Map<string, number>()
  const list = requests === 'all' ? everything(index, registry) : requests
  for (const request of list) {
    const found = await closure(store, registry, request)
    plan.notes.push(...found.notes.map((n) => `${request.label}: ${n}`))
    if (found.missing.length > 0) {
      plan.incomplete.push({ label: request.label, missing: found.missing })
      continue
    }
    plan.index.images.push({
      registry,
      repo: request.repo === '' ? null : request.repo,
      tag: request.tag,
      digest: found.digest,
      media_type: found.mediaType,
      manifests: [...found.manifests.keys()],
      blobs: [...found.blobs.keys()],
    })
    for (const [d, m] of found.manifests) manifests.set(d, m)
    for (const [d, size] of found.blobs) blobs.set(d, size)
  }
  plan.index.manifests = [...manifests].map(([d, m]) => ({ digest: d, ...m }))
  plan.index.blobs = [...blobs].map(([d, size]) => ({ digest: d, size }))
  return plan
}

/** Every tag, then every top-level manifest no tag points at (pulled by digest). */
function everything(index: IndexDb, registry: string): ImageRequest[] {
  const requests: ImageRequest[] = index.tagsOf(registry).map((t) => ({
    repo: t.repo,
    tag: t.tag,
    digest: null,
    label: `${t.repo}:${t.tag}`,
  }))
  const tagged = new Set(index.tagsOf(registry).map((t) => t.digest))
  const children = new Set<string>()
  const all = index.manifestDigests()
  for (const d of all) {
    const row = index.getManifest(d)
    if (row && INDEX_TYPES.has(row.media_type))
      for (const ref of manifestRefs(row.body)) children.add(ref.child)
  }
  for (const d of all) {
    if (!tagged.has(d) && !children.has(d)) requests.push({ repo: '', tag: null, digest: d, label: d })
  }
  return requests
}

interface Closure {
  digest: string
  mediaType: string
  manifests: Map<string, { media_type: string; size: number }>
  blobs: Map<string, number>
  missing: string[]
  notes: string[]
}

async function closure(store: Store, registry: string, request: ImageRequest): Promise<Closure> {
  const index = store.index
  const out: Closure = {
    digest: '',
    mediaType: '',
    manifests: new Map(),
    blobs: new Map(),
    missing: [],
    notes: [],
  }
  let top = request.digest
  if (top === null) {
    top = index.getTag(registry, request.repo, request.tag ?? '')?.digest ?? null
  }
  if (top === null) {
    out.missing.push(`tag ${request.tag} is not cached`)
    return out
  }
  out.digest = top
  const row = index.getManifest(top)
  if (row === undefined) {
    out.missing.push(`manifest ${top} is not cached`)
    return out
  }
  out.mediaType = row.media_type
  out.manifests.set(top, { media_type: row.media_type, size: row.body.length })
  const images: { digest: string; body: Buffer; platform: string | null }[] = []
  if (INDEX_TYPES.has(row.media_type)) {
    for (const ref of manifestRefs(row.body)) {
      const child = index.getManifest(ref.child)
      const platform = ref.platform ?? ref.child
      if (child === undefined) {
        out.notes.push(`platform ${platform} (${ref.child}) was never pulled; not included`)
        continue
      }
      out.manifests.set(ref.child, { media_type: child.media_type, size: child.body.length })
      images.push({ digest: ref.child, body: child.body, platform })
    }
    if (images.length === 0) out.missing.push(`none of the platforms of index ${top} is cached`)
  } else {
    images.push({ digest: top, body: row.body, platform: null })
  }
  for (const image of images) {
    for (const ref of manifestRefs(image.body)) {
      const row = index.getBlob(ref.child)
      const size = row && isDigest(ref.child) ? (await store.blobs.stat(ref.child))?.size : undefined
      if (row === undefined || size !== row.size) {
        out.missing.push(
          `blob ${ref.child}${image.platform === null ? '' : ` (${image.platform})`} is not cached`,
        )
        continue
      }
      out.blobs.set(ref.child, size)
    }
  }
  return out
}

export interface WriteProgress {
  bytes: number
  total: number
}

/**
 * Writes the archive to a temp file beside `path` and renames it into place once complete and
 * fsynced: a failed export leaves no partial archive behind.
 */
export async function writeArchive(
  store: Store,
  plan: ExportPlan,
  path: string,
  onProgress: (p: WriteProgress) => void = () => {},
): Promise<{ bytes: number }> {
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  const pack = tarPack()
  const written = pipeline(pack, createWriteStream(temp, { flags: 'wx' }))
  written.catch(() => {}) // awaited below; a failure while entries are added must not go unhandled
  const progress: WriteProgress = { bytes: 0, total: plan.index.blobs.reduce((n, b) => n + b.size, 0) }
  try {
    const mtime = new Date(plan.index.created)
    await addBuffer(pack, INDEX_ENTRY, Buffer.from(`${JSON.stringify(plan.index, null, 1)}\n`), mtime)
    for (const m of plan.index.manifests) {
      const row = store.index.getManifest(m.digest)
      if (row === undefined || sha256(row.body) !== m.digest) {
        throw new Error(`manifest ${m.digest} changed in the store while exporting; run pullcache verify`)
      }
      await addBuffer(pack, `manifests/sha256/${hex(m.digest)}`, row.body, mtime)
    }
    for (const b of plan.index.blobs) {
      await addFile(pack, store.blobs.stream(b.digest), b, mtime, (n) => {
        progress.bytes += n
        onProgress({ ...progress })
      })
    }
    pack.finalize()
    await written
    const handle = await open(temp, 'r')
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
    await rename(temp, path)
  } catch (err) {
    pack.destroy(err as Error)
    await written.catch(() => {})
    await rm(temp, { force: true })
    throw err
  }
  return { bytes: progress.bytes }
}

function addBuffer(pack: ReturnType<typeof tarPack>, name: string, body: Buffer, mtime: Date): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry({ name, size: body.length, mode: 0o644, mtime }, body, (err) =>
      err ? reject(err) : resolve(),
    )
  })
}

/** Copies a blob file into the archive, hashing it on the way: a corrupt file fails the export. */
async function addFile(
  pack: ReturnType<typeof tarPack>,
  bytes: Readable,
  blob: { digest: string; size: number },
  mtime: Date,
  onBytes: (n: number) => void,
): Promise<void> {
  let settle!: (err?: Error | null) => void
  const added = new Promise<void>((resolve, reject) => {
    settle = (err) => (err ? reject(err) : resolve())
  })
  const entry = pack.entry(
    { name: `blobs/sha256/${hex(blob.digest)}`, size: blob.size, mode: 0o644, mtime },
    settle,
  )
  const hash = createHash('sha256')
  let size = 0
  for await (const chunk of bytes) {
    const buf = chunk as Buffer
    size += buf.length
    if (size > blob.size) break
    hash.update(buf)
    onBytes(buf.length)
    if (!entry.write(buf)) await new Promise<void>((resolve) => entry.once('drain', () => resolve()))
  }
  const actual = `sha256:${hash.digest('hex')}`
  if (size !== blob.size || actual !== blob.digest) {
    const err = new Error(
      `blob ${blob.digest} in the store is corrupt (${size} bytes hashing to ${actual}); run pullcache verify --repair`,
    )
    entry.destroy(err)
    throw err
  }
  entry.end(undefined)
  await added
}

// --- import ----------------------------------------------------------------------------------

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
  if (await store.holds(digest, size)) {
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

function parseIndex(bytes: Buffer): ArchiveIndex {
  let json: unknown
  try {
    json = JSON.parse(bytes.toString('utf8'))
  } catch (err) {
    throw new ArchiveError(`${INDEX_ENTRY} is not JSON: ${(err as Error).message}`)
  }
  const parsed = indexSchema.safeParse(json)
  if (!parsed.success) {
    const first = parsed.error.issues[0]
    throw new ArchiveError(
      `${INDEX_ENTRY} is not a version ${ARCHIVE_VERSION} pullcache archive index: ${first?.path.join('.')}: ${first?.message}`,
    )
  }
  return parsed.data
}

function hex(d: string): string {
  return d.slice('sha256:'.length)
}
