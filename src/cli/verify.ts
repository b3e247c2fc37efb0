// `pullcache verify [--repair]`: re-hash every blob file and stored manifest, compare the index
// with the files, report what is wrong and, with --repair, put it right (see store/verify.ts).
// Exit 0 when the store is clean (or everything found was repaired), 1 when anything is wrong.

import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { humanBytes } from '../human-bytes.js'
import { BlobStore } from '../store/blob-store.js'
import { IndexDb } from '../store/index-db.js'
import { type Problem, type VerifyReport, verifyStore } from '../store/verify.js'
import { CliExit, CONFIG_FLAGS, configFrom, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parseCommand } from './args.js'

export const VERIFY_USAGE = `Usage: pullcache verify [options]

Re-hashes every blob file and every stored manifest, and compares the index with the files.
Reports corrupt blobs (bytes that do not hash to their digest), files whose size differs from
the index, index rows whose file is gone, files without an index row, and manifests whose bytes
do not hash to their digest. Safe to run while pullcache serve is running on the same store.

  --repair               fix what was found: move corrupt blob files to <data_dir>/quarantine/
                         (kept for inspection), delete index rows of missing or quarantined
                         files and of corrupt manifests, add rows for valid files without one;
                         whatever was removed is fetched again on the next pull
  --json                 print the report as JSON
  --config FILE          JSON config file (env PULLCACHE_CONFIG)
  --data-dir DIR         the store to check (default ./data; env PULLCACHE_DATA_DIR)
  --upstream URL         as serve --upstream (env PULLCACHE_UPSTREAM); verify does not use it

Exit status: 0 the store is clean, or everything found was repaired; 1 problems remain;
2 bad usage or configuration.
`

export const VERIFY_OPTIONS = {
  ...CONFIG_FLAGS,
  repair: { type: 'boolean' },
  json: { type: 'boolean' },
} as const

export async function verify(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, VERIFY_OPTIONS, VERIFY_USAGE)
  if (values.help) {
    process.stdout.write(VERIFY_USAGE)
    return EXIT_OK
  }
  if (positionals.length > 0) {
    throw new CliExit(EXIT_USAGE, `unexpected argument ${JSON.stringify(positionals[0])}\n\n${VERIFY_USAGE}`)
  }
  const config = configFrom(values)
  const root = resolve(config.data_dir)
  const dbPath = join(root, 'index.db')
  if (!existsSync(dbPath)) throw new CliExit(EXIT_FAILED, `no pullcache store at ${root}`)
  const repair = values.repair === true
  // Only a repair writes; a check opens the index read-only, so it can never change anything.
  const index = new IndexDb(dbPath, { readonly: !repair })
  let report: VerifyReport
  try {
    report = await verifyStore(new BlobStore(root), index, { repair })
  } finally {
    index.close()
  }

  const clean = report.problems.every((p) => p.repaired)
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify(
        {
          data_dir: root,
          ok: clean,
          repair,
          blobs: report.blobs,
          manifests: report.manifests,
          problems: report.problems.map((p) => ({
            kind: p.kind,
            digest: p.digest,
            size: p.size,
            index_size: p.indexSize,
            actual: p.actual,
            repaired: p.repaired,
            action: p.action,
          })),
        },
        null,
        2,
      )}\n`,
    )
  } else {
    const lines = report.problems.map(describe)
    const repaired = report.problems.filter((p) => p.repaired).length
    const found =
      report.problems.length === 0
        ? 'no problems'
        : `${report.problems.length} problem${report.problems.length === 1 ? '' : 's'}` +
          (repair ? `, ${repaired} repaired` : ' (run with --repair to fix)')
    lines.push(
      `checked ${report.blobs.checked} blobs (${humanBytes(report.blobs.bytes)}) and ` +
        `${report.manifests.checked} manifests (${humanBytes(report.manifests.bytes)}) in ${root}: ${found}`,
    )
    process.stdout.write(`${lines.join('\n')}\n`)
  }
  return clean ? EXIT_OK : EXIT_FAILED
}

function describe(p: Problem): string {
  let what: string
  switch (p.kind) {
    case 'corrupt_blob':
      what =
        `corrupt blob ${p.digest}: its ${p.size} bytes hash to ${p.actual}` +
        (p.indexSize !== null && p.indexSize !== p.size ? ` (the index says ${p.indexSize} bytes)` : '')
      break
    case 'size_mismatch':
      what = `size mismatch ${p.digest}: the file has ${p.size} bytes, the index says ${p.indexSize}`
      break
    case 'missing_file':
      what = `missing file ${p.digest}: indexed (${p.indexSize} bytes) but not on disk`
      break
    case 'orphan_file':
      what = `orphan file ${p.digest}: ${p.size} valid bytes without an index row`
      break
    case 'corrupt_manifest':
      what =
        `corrupt manifest ${p.digest}: its ${p.size} bytes hash to ${p.actual}` +
        (p.indexSize !== p.size ? ` (the index says ${p.indexSize} bytes)` : '')
      break
  }
  return p.action === null ? what : `${what}; ${p.action}`
}
