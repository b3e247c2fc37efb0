// `pullcache export FILE [IMAGE...|--all]`: write cached images to one archive file for an
// air-gapped pullcache (format in store/archive.ts). Only what the store holds completely is
// exported: a named image with anything missing is an error naming what, and nothing is written.

import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { humanBytes } from '../human-bytes.js'
import { registryKeyOf } from '../oci.js'
import { InvalidReference, isDockerHubReference, parseImageReference } from '../prefetch/reference.js'
import { type ImageRequest, planExport, writeArchive } from '../store/archive-export.js'
import { BlobStore } from '../store/blob-store.js'
import { IndexDb } from '../store/index-db.js'
import { Store } from '../store/store.js'
import { CliExit, CONFIG_FLAGS, configFrom, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parseCommand } from './args.js'

export const EXPORT_USAGE = `Usage: pullcache export FILE [IMAGE...] [options]
       pullcache export FILE --all [options]

Writes cached images to FILE, a tar archive for 'pullcache import' on another (air-gapped)
pullcache: every manifest with its exact bytes, every config and layer blob, and the tags.
Images are Docker Hub references (alpine:3.20, user/app@sha256:...). Of a multi-platform image,
the platforms that were pulled are exported. Nothing is downloaded: a named image that is not
completely cached is an error that says what is missing, and then no file is written.

  --all                  every cached tag, and every image cached by digest only; images
                         not completely cached are skipped and listed
  --config FILE          JSON config file (env PULLCACHE_CONFIG)
  --data-dir DIR         the store to export from (default ./data; env PULLCACHE_DATA_DIR)
  --upstream URL         whose tags to export (default: the configured upstream;
                         env PULLCACHE_UPSTREAM)

Exit status: 0 the archive was written; 1 an image is not cached, or writing failed;
2 bad usage or configuration.
`

export const EXPORT_OPTIONS = { ...CONFIG_FLAGS, all: { type: 'boolean' } } as const

export async function exportArchive(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, EXPORT_OPTIONS, EXPORT_USAGE)
  if (values.help) {
    process.stdout.write(EXPORT_USAGE)
    return EXIT_OK
  }
  const [file, ...names] = positionals
  if (file === undefined) throw new CliExit(EXIT_USAGE, `export: no FILE given\n\n${EXPORT_USAGE}`)
  const all = values.all === true
  if (all ? names.length > 0 : names.length === 0) {
    throw new CliExit(EXIT_USAGE, `export: name the images to export, or --all, not both\n\n${EXPORT_USAGE}`)
  }
  const requests: ImageRequest[] = []
  for (const name of names) {
    let ref: ReturnType<typeof parseImageReference>
    try {
      ref = parseImageReference(name)
    } catch (err) {
      if (err instanceof InvalidReference) throw new CliExit(EXIT_USAGE, err.message)
      throw err
    }
    if (!isDockerHubReference(ref)) {
      throw new CliExit(
        EXIT_FAILED,
        `${ref.canonical} is not a Docker Hub image; pullcache holds Docker Hub images only`,
      )
    }
    requests.push({
      repo: ref.path,
      tag: ref.digest === null ? ref.tag : null,
      digest: ref.digest,
      label: ref.canonical,
    })
  }

  const config = configFrom(values)
  const root = resolve(config.data_dir)
  const dbPath = join(root, 'index.db')
  if (!existsSync(dbPath)) throw new CliExit(EXIT_FAILED, `no pullcache store at ${root}`)
  // Tags are keyed as the mirror records them.
  const registry = registryKeyOf(config.upstream.url)
  const index = new IndexDb(dbPath, { readonly: true })
  const store = new Store(new BlobStore(root), index)
  try {
    const plan = await planExport(store, registry, all ? 'all' : requests)
    for (const note of plan.notes) process.stderr.write(`pullcache: note: ${note}\n`)
    if (plan.incomplete.length > 0) {
      const lines = plan.incomplete.map((i) => `${i.label}: ${i.missing.join('; ')}`)
      if (!all) {
        throw new CliExit(EXIT_FAILED, `not completely cached, nothing written:\n  ${lines.join('\n  ')}`)
      }
      for (const line of lines) process.stderr.write(`pullcache: skipped ${line}\n`)
    }
    if (plan.index.images.length === 0)
      throw new CliExit(EXIT_FAILED, 'nothing to export: no image is completely cached')
    const { bytes } = await writeArchive(store, plan, resolve(file))
    const lines = plan.index.images.map(
      (i) => `exported ${i.repo ?? '(by digest)'}${i.tag === null ? '' : `:${i.tag}`} ${i.digest}`,
    )
    lines.push(
      `wrote ${file}: ${plan.index.images.length} images, ${plan.index.manifests.length} manifests, ` +
        `${plan.index.blobs.length} blobs (${humanBytes(bytes)}) from ${registry}`,
    )
    process.stdout.write(`${lines.join('\n')}\n`)
    return EXIT_OK
  } catch (err) {
    if (err instanceof CliExit) throw err
    throw new CliExit(EXIT_FAILED, `export failed: ${(err as Error).message}`)
  } finally {
    index.close()
  }
}
