// `pullcache verify [--repair]`: re-hash every blob file and stored manifest, compare the index
// with the files, report what is wrong and, with --repair, put it right (see store/verify.ts).
// Exit 0 when the store is clean (or everything found was repaired), 1 when anything is wrong.

import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { humanBytes } from '../human-bytes.js'
import { BlobStore } from '../store/blob-store.js'
import { IndexDb } from '../store/index-db.js'
import { Store } from '../store/store.js'
import { type Problem, type VerifyProgress, type VerifyReport, verifyStore } from '../store/verify.js'
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
  --from PREFIX          start at this prefix directory (two hex digits, 00..ff): resumes a
                         pass that was interrupted, as its last line says
  --json                 print the report as JSON
  --config FILE          JSON config file (env PULLCACHE_CONFIG)
  --data-dir DIR         the store to check (default ./data; env PULLCACHE_DATA_DIR)
  --upstream URL         as serve --upstream (env PULLCACHE_UPSTREAM); verify does not use it

On a big store this takes long: progress is drawn on stderr when it is a terminal, and Ctrl-C
(SIGINT) stops cleanly after the blob in hand. What was checked and repaired stays so, and the
report says where to resume with --from.

Exit status: 0 the store is clean, or everything found was repaired; 1 problems remain;
2 bad usage or configuration; 130 interrupted (the report covers what was checked).
`

/** The conventional status of a command stopped by SIGINT. */
const EXIT_INTERRUPTED = 130

export const VERIFY_OPTIONS = {
  ...CONFIG_FLAGS,
  repair: { type: 'boolean' },
  json: { type: 'boolean' },
  from: { type: 'string' },
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
  const from = values.from as string | undefined
  if (from !== undefined && !/^[0-9a-f]{2}$/.test(from)) {
    throw new CliExit(EXIT_USAGE, `--from: not a prefix of two hex digits (00..ff): ${JSON.stringify(from)}`)
  }
  const config = configFrom(values)
  const root = resolve(config.data_dir)
  const dbPath = join(root, 'index.db')
  if (!existsSync(dbPath)) throw new CliExit(EXIT_FAILED, `no pullcache store at ${root}`)
  const repair = values.repair === true
  // Only a repair writes; a check opens the index read-only, so it can never change anything.
  const index = new IndexDb(dbPath, { readonly: !repair })
  // Ctrl-C stops between two blobs instead of killing the process mid-repair.
  const controller = new AbortController()
  const interrupt = () => controller.abort()
  process.once('SIGINT', interrupt)
  const progress = process.stderr.isTTY ? progressLine() : undefined
  let report: VerifyReport
  try {
    report = await verifyStore(new Store(new BlobStore(root), index), {
      repair,
      fromPrefix: from,
      signal: controller.signal,
      onProgress: progress?.update,
    })
  } finally {
    process.off('SIGINT', interrupt)
    progress?.clear()
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
          stopped_at: report.stoppedAt,
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
    if (report.stoppedAt !== null) {
      lines.push(
        `interrupted before prefix ${report.stoppedAt} of 00..ff; manifests not checked; ` +
          `continue with: pullcache verify --from ${report.stoppedAt}${repair ? ' --repair' : ''}`,
      )
    }
    process.stdout.write(`${lines.join('\n')}\n`)
  }
  if (report.stoppedAt !== null) return EXIT_INTERRUPTED
  return clean ? EXIT_OK : EXIT_FAILED
}

/** One line on stderr, redrawn at most every 200 ms: prefix reached, blobs and bytes so far. */
function progressLine(): { update: (p: VerifyProgress) => void; clear: () => void } {
  let last = 0
  const started = Date.now()
  return {
    update(p) {
      const now = Date.now()
      if (now - last < 200) return
      last = now
      const done = (Number.parseInt(p.prefix, 16) / 256) * 100
      const rate = p.bytes / Math.max(1, (now - started) / 1000)
      process.stderr.write(
        `\r\x1b[Kverify: prefix ${p.prefix} (${done.toFixed(0)}%), ${p.blobs} blobs, ` +
          `${humanBytes(p.bytes)} at ${humanBytes(rate)}/s, ${p.problems} problems`,
      )
    },
    clear() {
      process.stderr.write('\r\x1b[K')
    },
  }
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
