// `pullcache gc`: apply the eviction policy now. With --dry-run, list what would go and the
// bytes it would free, and change nothing; without, remove exactly that. Safe while a server
// runs on the same data dir: rows go before files, and the server opens a blob before it
// answers, so a blob that disappears mid-request is fetched again rather than served broken.

import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { humanBytes } from '../human-bytes.js'
import { createLogger, silentLogger } from '../log.js'
import { BlobStore } from '../store/blob-store.js'
import { type EvictionPlan, Evictor } from '../store/eviction.js'
import { budgetShares, policyFrom } from '../store/eviction-policy.js'
import { IndexDb } from '../store/index-db.js'
import { Store } from '../store/store.js'
import { CliExit, CONFIG_FLAGS, configFrom, EXIT_FAILED, EXIT_OK, parseCommand } from './args.js'

export const GC_USAGE = `Usage: pullcache gc [options]

Removes what the eviction policy says should go: least recently used blobs above the
high-water mark of cache.max_size, and blobs and manifests unused for cache.max_unused_age.
Sizes are what the blob files take on disk (allocated blocks), which is what the budget counts.
Pinned images (cache.pins) and everything they reference stay.

  --dry-run              list what would be removed and the bytes it frees; change nothing
  --max-size SIZE        use this budget instead of cache.max_size (e.g. 20GiB;
                         env PULLCACHE_MAX_SIZE)
  --max-unused-age DUR   use this age instead of cache.max_unused_age (e.g. 30d)
  --json                 print the plan and the result as JSON
  --config FILE          JSON config file (default: embedded defaults; env PULLCACHE_CONFIG)
  --data-dir DIR         the store (default ./data; env PULLCACHE_DATA_DIR)
  --upstream URL         as serve --upstream (env PULLCACHE_UPSTREAM)
`

export const GC_OPTIONS = {
  ...CONFIG_FLAGS,
  'dry-run': { type: 'boolean' },
  json: { type: 'boolean' },
  'max-size': { type: 'string' },
  'max-unused-age': { type: 'string' },
} as const

export async function gc(args: string[]): Promise<number> {
  const { values } = parseCommand(args, GC_OPTIONS, GC_USAGE)
  if (values.help) {
    process.stdout.write(GC_USAGE)
    return EXIT_OK
  }
  const config = configFrom(values)
  const root = resolve(config.data_dir)
  if (!existsSync(join(root, 'index.db'))) throw new CliExit(EXIT_FAILED, `no pullcache store at ${root}`)
  const index = new IndexDb(join(root, 'index.db'))
  try {
    const evictor = new Evictor({
      store: new Store(new BlobStore(root), index),
      log: values.json ? silentLogger : createLogger('warn'),
      policy: policyFrom(config.cache, budgetShares(config)),
    })
    const plan = evictor.plan()
    if (values['dry-run']) {
      print(plan, undefined, values.json === true)
      return EXIT_OK
    }
    const result = await evictor.execute(plan)
    print(plan, result, values.json === true)
    return EXIT_OK
  } finally {
    index.close()
  }
}

function print(
  plan: EvictionPlan,
  result: Awaited<ReturnType<Evictor['execute']>> | undefined,
  json: boolean,
): void {
  if (json) {
    process.stdout.write(
      `${JSON.stringify({ dry_run: result === undefined, plan: { ...plan, pinned: plan.pinned }, result: result ?? null }, null, 2)}\n`,
    )
    return
  }
  const lines: string[] = []
  for (const b of plan.blobs) {
    lines.push(
      `blob      ${b.digest}  ${humanBytes(b.allocated).padStart(10)}  ${b.reason}  last used ${iso(b.lastAccess)}`,
    )
  }
  for (const m of plan.manifests) lines.push(`manifest  ${m.digest}  last used ${iso(m.lastAccess)}`)
  for (const t of plan.tags) lines.push(`tag       ${t.repo}:${t.tag}`)
  const verb = result === undefined ? 'would free' : 'freed'
  const count = result ?? {
    blobs: plan.blobs.length,
    bytes: plan.bytes,
    manifests: plan.manifests.length,
    tags: plan.tags.length,
  }
  lines.push(
    `${verb} ${humanBytes(count.bytes)} (${count.bytes} bytes): ${count.blobs} blobs, ${count.manifests} manifests, ${count.tags} tags; ` +
      `store ${humanBytes(plan.storeBytes)} -> ${humanBytes(plan.storeBytes - count.bytes)} on disk; ${plan.pinned} pinned digests kept`,
  )
  process.stdout.write(`${lines.join('\n')}\n`)
}

function iso(ms: number): string {
  return new Date(ms).toISOString()
}
