// All SQL of pullcache lives in the index modules (src/store/index-db.ts and the index-*.ts
// beside it): the rest of the store asks IndexDb's methods. Biome keeps better-sqlite3 imports
// there (biome.json); what it cannot see is a module reaching through IndexDb.database to the
// connection, which a type alone does not need importing for. This test reads the sources.
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { expect, test } from 'vitest'

const SRC = join(import.meta.dirname, '../../src')
const INDEX_MODULE = /^store\/index-[\w-]+\.ts$/

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sources(path)
    return entry.name.endsWith('.ts') ? [path] : []
  })
}

test('no module outside the index modules reaches for the database connection', () => {
  const offenders: string[] = []
  for (const path of sources(SRC)) {
    const name = relative(SRC, path)
    if (INDEX_MODULE.test(name)) continue
    readFileSync(path, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (/\.database\b/.test(line)) offenders.push(`${name}:${i + 1}: ${line.trim()}`)
      })
  }
  expect(offenders).toEqual([])
})

test('the index modules are where the test above looks for them', () => {
  const names = sources(SRC).map((p) => relative(SRC, p))
  expect(names.filter((n) => INDEX_MODULE.test(n))).toContain('store/index-db.ts')
})
