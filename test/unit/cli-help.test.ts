// Every command's --help lists every flag its parser accepts, and names next to each flag the
// environment variable that does the same, as config.ts's table has it (through args.ts's
// KEY_FLAGS, the table configFrom applies). A flag or variable added to those tables without a
// word in --help fails here.

import { describe, expect, test } from 'vitest'
import { flagEnvName, KEY_FLAGS } from '../../src/cli/args.js'
import { CLUSTER_OPTIONS, CLUSTER_USAGE } from '../../src/cli/cluster.js'
import { CONFIG_OPTIONS, CONFIG_USAGE } from '../../src/cli/config-check.js'
import { EXPORT_OPTIONS, EXPORT_USAGE } from '../../src/cli/export.js'
import { GC_OPTIONS, GC_USAGE } from '../../src/cli/gc.js'
import { IMPORT_OPTIONS, IMPORT_USAGE } from '../../src/cli/import.js'
import { PREFETCH_OPTIONS, PREFETCH_USAGE } from '../../src/cli/prefetch.js'
import { SERVE_OPTIONS, SERVE_USAGE } from '../../src/cli/serve.js'
import { STATS_OPTIONS, STATS_USAGE } from '../../src/cli/stats.js'
import { VERIFY_OPTIONS, VERIFY_USAGE } from '../../src/cli/verify.js'
import { loadConfig } from '../../src/config.js'

const COMMANDS: [string, string, Record<string, unknown>][] = [
  ['serve', SERVE_USAGE, SERVE_OPTIONS],
  ['config check', CONFIG_USAGE, CONFIG_OPTIONS],
  ['stats', STATS_USAGE, STATS_OPTIONS],
  ['gc', GC_USAGE, GC_OPTIONS],
  ['verify', VERIFY_USAGE, VERIFY_OPTIONS],
  ['prefetch', PREFETCH_USAGE, PREFETCH_OPTIONS],
  ['export', EXPORT_USAGE, EXPORT_OPTIONS],
  ['import', IMPORT_USAGE, IMPORT_OPTIONS],
  ['cluster check', CLUSTER_USAGE, CLUSTER_OPTIONS],
]

/**
 * The help entry of a flag: the option line that names it ("  --data-dir DIR  ..." or
 * "  --config FILE, --data-dir DIR") with the indented lines that continue it.
 */
function entryOf(usage: string, flag: string): string | undefined {
  const lines = usage.split('\n')
  const start = lines.findIndex((l) => /^ {2}-/.test(l) && new RegExp(`--${flag}(?![\\w-])`).test(l))
  if (start === -1) return undefined
  const entry = [lines[start]!]
  for (const line of lines.slice(start + 1)) {
    if (!/^ {3,}\S/.test(line)) break
    entry.push(line)
  }
  return entry.join('\n')
}

describe('--help', () => {
  test.each(COMMANDS)('pullcache %s: every flag, with its environment variable', (_name, usage, options) => {
    for (const flag of Object.keys(options)) {
      const entry = entryOf(usage, flag)
      expect(entry, `--${flag} is accepted but not in --help`).toBeDefined()
      const env = flagEnvName(flag)
      if (env !== undefined) expect(entry, `--${flag} does not name ${env}`).toContain(env)
    }
  })

  test('the flag table names real config keys, and the environment variables it names set them', () => {
    const config = loadConfig({ env: {} }) as unknown as Record<string, unknown>
    for (const [flag, key] of Object.entries(KEY_FLAGS)) {
      const value = key.split('.').reduce<unknown>((v, k) => (v as Record<string, unknown>)[k], config)
      expect(value, `--${flag}: ${key} is not a config key`).not.toBeUndefined()
    }
    // Two variables checked through the loader: the help names ones that do what it says.
    expect(flagEnvName('tag-freshness')).toBe('PULLCACHE_TAG_FRESHNESS')
    expect(loadConfig({ env: { [flagEnvName('tag-freshness')!]: '5m' } }).cache.tag_freshness).toBe(300_000)
    expect(loadConfig({ env: { [flagEnvName('log-level')!]: 'warn' } }).log.level).toBe('warn')
    expect(flagEnvName('max-unused-age')).toBeUndefined()
  })

  test('an option line that is not there is not found', () => {
    expect(entryOf(SERVE_USAGE, 'listen')).toContain('PULLCACHE_LISTEN')
    expect(entryOf(SERVE_USAGE, 'list')).toBeUndefined()
    expect(entryOf(SERVE_USAGE, 'nothing')).toBeUndefined()
  })
})
