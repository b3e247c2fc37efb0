// Vitest global setup: the whole run gets a private TMPDIR (os.tmpdir() in every worker), and a
// run that leaves anything in it fails, naming what was left. Tests must remove every temp dir
// and file they make; this is what keeps them honest. The prefix is short on purpose: the e2e
// harness nests dockerd's unix sockets under temp dirs, and sun_path is 108 bytes.

import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export default function setup(): () => void {
  const outer = process.env.TMPDIR
  const dir = mkdtempSync(join(tmpdir(), 'pct-'))
  process.env.TMPDIR = dir
  return () => {
    if (outer === undefined) delete process.env.TMPDIR
    else process.env.TMPDIR = outer
    // The e2e suites share one 200 MB layer per run, keyed by this (the vitest) process: a cache
    // this run made on purpose, not a leftover.
    rmSync(join(dir, `pce2e-shared-${process.pid}`), { recursive: true, force: true })
    const left = readdirSync(dir)
    rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
    if (left.length > 0) {
      // Vitest reports an error thrown here but still exits 0: set the exit code as well.
      process.exitCode = 1
      throw new Error(`tests left ${left.length} entries in their TMPDIR (removed now): ${left.join(', ')}`)
    }
  }
}
