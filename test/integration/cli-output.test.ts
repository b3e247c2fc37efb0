// What a command prints reaches a pipe whole: `pullcache stats --json | jq` must never see a
// document cut at the pipe's buffer size because the process exited before stdout drained.
// Runs the built CLI (`npm run build` first).

import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { expect, test } from 'vitest'
import type { StatsReport } from '../../src/mirror/stats-report.js'
import { IndexDb } from '../../src/store/index-db.js'
import { runCli } from '../support/run-cli.js'
import { tmpRoot } from '../support/tmp.js'

const REPOS = 6_000

/** A data dir whose index has REPOS repositories with traffic: megabytes of `stats --json`. */
async function busyDataDir(): Promise<string> {
  const dir = await tmpRoot()
  const index = new IndexDb(join(dir, 'index.db'))
  for (let i = 0; i < REPOS; i++) {
    index.account({
      registry: 'registry-1.docker.io',
      repo: `team-${i % 97}/service-${String(i).padStart(5, '0')}`,
      kind: 'blob',
      method: 'GET',
      result: i % 3 === 0 ? 'miss' : 'hit',
      bytesCache: i % 3 === 0 ? 0 : 1_000 + i,
      bytesUpstream: i % 3 === 0 ? 1_000 + i : 0,
      pullsAvoided: 0,
    })
  }
  index.close()
  return dir
}

test('stats --json of more than 1 MB arrives whole through a pipe', async () => {
  const dir = await busyDataDir()
  try {
    // runCli reads the child's stdout from a pipe until it closes.
    const { code, stdout, stderr } = await runCli([
      'stats',
      '--json',
      '--top',
      String(REPOS),
      '--data-dir',
      dir,
    ])
    expect(stderr).toBe('')
    expect(code).toBe(0)
    expect(Buffer.byteLength(stdout)).toBeGreaterThan(1_000_000)
    const report = JSON.parse(stdout) as StatsReport
    expect(report.top_repositories).toHaveLength(REPOS)
    expect(report.overall.requests).toBe(REPOS)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('a reader that goes away early (| head) ends the command with status 1, not a stack trace', async () => {
  const dir = await busyDataDir()
  try {
    const { code, stderr } = await runCli(['stats', '--json', '--top', String(REPOS), '--data-dir', dir], {
      closeStdoutEarly: true,
    })
    expect(stderr).toBe('')
    expect(code).toBe(1)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
