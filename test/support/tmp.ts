// Temp dirs for tests. Every dir made here is removed after the test file that made it (by the
// afterAll in tmp-cleanup.ts, a vitest setup file), whether its tests passed or not, so a test
// only has to remove what it wants gone sooner.

import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const made: string[] = []

export async function tmpRoot(label = 'pullcache-test'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `${label}-`))
  made.push(dir)
  return dir
}

export async function removeTmpRoots(): Promise<void> {
  for (const dir of made.splice(0)) await rm(dir, { recursive: true, force: true, maxRetries: 3 })
}
