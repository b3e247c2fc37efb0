// The reliability suite (RELIABILITY.md): every check of checks.ts against pullcache, and with
// PULLCACHE_RELIABILITY=full (bench/reliability) at full size against pullcache and distribution's
// proxy mode, writing the table to test-results/reliability.md.
//
// pullcache must pass every check. distribution's results are figures for the comparison: it is
// held to the same criteria, but its failures do not fail the run.
import { mkdir, writeFile } from 'node:fs/promises'
import { afterAll, describe, expect, test } from 'vitest'
import { BOUNDED, CHECKS, type CheckResult, FULL } from './checks.js'
import { renderReport } from './report.js'
import { SERVER_KINDS, type ServerKind } from './servers.js'

const full = process.env.PULLCACHE_RELIABILITY === 'full'
const sizes = full ? FULL : BOUNDED
const kinds: ServerKind[] = (
  process.env.PULLCACHE_RELIABILITY_SERVERS?.split(',') ?? (full ? SERVER_KINDS : ['pullcache'])
).filter((k): k is ServerKind => (SERVER_KINDS as readonly string[]).includes(k))
const only = process.env.PULLCACHE_RELIABILITY_CHECKS?.split(',')
const results: CheckResult[] = []

afterAll(async () => {
  if (results.length === 0) return
  const report = renderReport(results, { full, sizes })
  await mkdir('test-results', { recursive: true })
  await writeFile('test-results/reliability.md', report)
  await writeFile('test-results/reliability.json', `${JSON.stringify(results, null, 2)}\n`)
  process.stdout.write(`\n${report}\n`)
})

for (const kind of kinds) {
  describe(kind, () => {
    for (const check of CHECKS) {
      if (only !== undefined && !only.includes(check.id)) continue
      test(check.title, { timeout: full ? 1_800_000 : 240_000 }, async (ctx) => {
        const r = await check.run(kind, sizes)
        results.push(r)
        // Only the disk-full check can be unrunnable (mounting a tmpfs needs root). In CI nothing
        // may skip: there a check that could not run fails.
        if (r.pass === null) {
          if (process.env.CI) expect.fail(`could not run: ${r.failures.join('; ')}`)
          ctx.skip(r.failures.join('; '))
        }
        if (kind === 'pullcache') expect(r.failures).toEqual([])
      })
    }
  })
}
