// `pullcache import FILE`: load an archive written by 'pullcache export' into this store. Every
// manifest and blob is verified while it is read; an image is recorded only when all of it
// verified (store/archive-import.ts). Safe while pullcache serve runs on the same store: blobs arrive
// through the store's verified writer like any fill, and tmp/ is not emptied.

import { createReadStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { humanBytes } from '../human-bytes.js'
import { registryKeyOf } from '../oci.js'
import { ArchiveError } from '../store/archive.js'
import { importArchive } from '../store/archive-import.js'
import { BlobStore } from '../store/blob-store.js'
import { IndexDb } from '../store/index-db.js'
import { Store } from '../store/store.js'
import { CliExit, CONFIG_FLAGS, configFrom, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parseCommand } from './args.js'

export const IMPORT_USAGE = `Usage: pullcache import FILE [options]

Loads an archive written by 'pullcache export' into this pullcache's store. Every manifest and
blob is checked against its digest while it is read; an image whose content fails is refused
as a whole (its tag is not recorded). Tags are recorded as just checked, so they are served
from the cache, and when upstream cannot be reached, served stale.

  --registry HOST        record the tags for this upstream registry host instead of the one
                         the archive came from (e.g. registry-1.docker.io)
  --config FILE          JSON config file (env PULLCACHE_CONFIG)
  --data-dir DIR         the store to import into (default ./data; env PULLCACHE_DATA_DIR)
  --upstream URL         the upstream this pullcache mirrors (default: the configured one;
                         env PULLCACHE_UPSTREAM)

Exit status: 0 every image was imported; 1 an image was refused or the archive is unreadable;
2 bad usage or configuration.
`

export const IMPORT_OPTIONS = { ...CONFIG_FLAGS, registry: { type: 'string' } } as const

export async function importArchiveCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, IMPORT_OPTIONS, IMPORT_USAGE)
  if (values.help) {
    process.stdout.write(IMPORT_USAGE)
    return EXIT_OK
  }
  if (positionals.length !== 1) {
    throw new CliExit(EXIT_USAGE, `import: give exactly one FILE\n\n${IMPORT_USAGE}`)
  }
  const file = positionals[0]!
  const override = values.registry as string | undefined
  if (override !== undefined && !/^[a-zA-Z0-9.-]+(?::\d+)?$|^\[[0-9a-fA-F:]+\](?::\d+)?$/.test(override)) {
    throw new CliExit(EXIT_USAGE, `--registry must be a host[:port], not ${JSON.stringify(override)}`)
  }
  const config = configFrom(values)
  const root = resolve(config.data_dir)
  // The registry this pullcache records and looks tags up under.
  const mirrored = registryKeyOf(config.upstream.url)

  const input = createReadStream(file)
  await new Promise<void>((ok, fail) => {
    input.once('open', () => ok())
    input.once('error', (err: NodeJS.ErrnoException) =>
      fail(new CliExit(EXIT_USAGE, `cannot read ${file}: ${err.code ?? err.message}`)),
    )
  })
  await mkdir(root, { recursive: true })
  const index = new IndexDb(join(root, 'index.db'))
  let report: Awaited<ReturnType<typeof importArchive>>
  try {
    report = await importArchive(
      input,
      new Store(new BlobStore(root), index),
      override === undefined ? {} : { registry: override },
    )
  } catch (err) {
    input.destroy()
    if (err instanceof ArchiveError) throw new CliExit(EXIT_FAILED, `${file}: ${err.message}`)
    throw err
  } finally {
    index.close()
  }

  for (const problem of report.problems) process.stderr.write(`pullcache: ${file}: ${problem}\n`)
  for (const r of report.refused)
    process.stderr.write(`pullcache: refused ${r.label}: ${r.reasons.join('; ')}\n`)
  const lines = report.imported.map((i) => `imported ${i.label} ${i.digest}`)
  const total = report.imported.length + report.refused.length
  lines.push(
    `import: ${report.imported.length} of ${total} images from ${report.archiveRegistry}; ` +
      `${report.blobs.added} blobs added (${humanBytes(report.blobs.bytes)}), ` +
      `${report.blobs.present} already present, ${report.manifests.recorded} manifests recorded`,
  )
  process.stdout.write(`${lines.join('\n')}\n`)
  if (report.registry !== mirrored && report.imported.length > 0) {
    process.stderr.write(
      `pullcache: warning: the tags were recorded for ${report.registry}, but this pullcache mirrors ` +
        `${mirrored}; it serves them by digest only (import with --registry ${mirrored} to serve the tags)\n`,
    )
  }
  return report.refused.length === 0 && report.problems.length === 0 ? EXIT_OK : EXIT_FAILED
}
