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
// This module is the format: the index entry's schema, and reading it back. Export
// (archive-export.ts) reads only what the store holds, and hashes every blob as it copies it,
// so a store corrupted on disk cannot produce an archive. Import (archive-import.ts) trusts
// nothing in the file: each manifest and blob is hashed as it streams in; a blob goes in
// through the store's verified writer (the fill's too: hashed, size-checked, fsynced, renamed,
// then its row); what an image needs is worked out from its verified manifest bytes, not from
// the archive's lists; and an image is recorded (manifests, then its tag) only when all of it
// verified. Nothing is ever held in memory but manifests, which are small and live in the index
// anyway.

import { z } from 'zod'
import { isDigest, isTag, REPO_NAME } from '../oci.js'

export const ARCHIVE_FORMAT = 'pullcache-archive'
export const ARCHIVE_VERSION = 1
export const INDEX_ENTRY = 'pullcache-archive.json'
/** The largest index entry import reads. */
export const MAX_INDEX_BYTES = 256 * 1024 * 1024

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

export function parseIndex(bytes: Buffer): ArchiveIndex {
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

/** The hex of a sha256 digest: an entry's name under manifests/ or blobs/. */
export function hex(d: string): string {
  return d.slice('sha256:'.length)
}
