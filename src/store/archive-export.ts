// Writing an archive (the format is in archive.ts): what a set of images needs, worked out from
// the index and checked against the files, then one tar written beside its destination and
// renamed into place once complete. Every blob is hashed as it is copied, so a store corrupted
// on disk cannot produce an archive.

import { createHash, randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { open, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { pack as tarPack } from 'tar-stream'
import { INDEX_TYPES, isDigest, manifestRefs, sha256 } from '../oci.js'
import { ARCHIVE_FORMAT, ARCHIVE_VERSION, type ArchiveIndex, hex, INDEX_ENTRY } from './archive.js'
import type { IndexDb } from './index-db.js'
import type { Store } from './store.js'

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
      const size = isDigest(ref.child) ? await store.sizeOf(ref.child) : undefined
      if (size === undefined) {
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
