// Modules are cut by what they own; one that grows past about 400 lines usually owns several
// things, and is split rather than let grow. This test reads the sources.
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { expect, test } from 'vitest'

const SRC = join(import.meta.dirname, '../../src')
const MAX_LINES = 400

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sources(path)
    return entry.name.endsWith('.ts') ? [path] : []
  })
}

test(`no module in src is over ${MAX_LINES} lines`, () => {
  const over = sources(SRC)
    .map((path) => ({ name: relative(SRC, path), lines: readFileSync(path, 'utf8').split('\n').length - 1 }))
    .filter((m) => m.lines > MAX_LINES)
    .map((m) => `${m.name}: ${m.lines} lines`)
  expect(over).toEqual([])
})
