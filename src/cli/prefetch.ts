// `pullcache prefetch`: warm the cache with images named on the command line, in a list file, a
// Compose file or Kubernetes manifests. Each image is pulled through a pullcache HTTP endpoint
// exactly as a client would pull it (prefetch/puller.ts), so what ends up cached is what the
// mirror itself verified and stored: a running pullcache (--server), or one started in-process
// on 127.0.0.1 over the configured data dir and closed at the end.

import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { humanBytes } from '../human-bytes.js'
import { createLogger } from '../log.js'
import { InvalidPlatform, type Platform, parsePlatforms } from '../prefetch/platform.js'
import { Puller, type PullResult } from '../prefetch/puller.js'
import {
  type ImageReference,
  InvalidReference,
  isDockerHubReference,
  parseImageReference,
} from '../prefetch/reference.js'
import {
  type FoundReference,
  parseDotEnv,
  referencesFromCompose,
  referencesFromKubernetes,
  referencesFromList,
  SourceError,
} from '../prefetch/sources.js'
import { type RunningServer, startServer } from '../server.js'
import { CliExit, CONFIG_FLAGS, configFrom, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parseCommand } from './args.js'

export const PREFETCH_USAGE = `Usage: pullcache prefetch [options] [IMAGE...]

Warms the cache: pulls each image through pullcache as a client would, verifying every digest,
so later pulls are served from the cache. Images are Docker references (alpine, user/app:1,
redis@sha256:...); only Docker Hub images can go through this pullcache, others are reported
and skipped.

  --file LIST            image references, one per line; # starts a comment
  --compose FILE         the image: of each service of a Compose file (services that are
                         built locally are skipped); \${VAR} is taken from the environment
                         and a .env file beside it, as Compose does
  --kubernetes FILE      every container, init container and ephemeral container image of
                         the Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs
                         and CronJobs in a (multi-document) YAML file
  --platform LIST        platforms to fetch from multi-platform images, comma-separated
                         (default linux/amd64), e.g. linux/amd64,linux/arm64
  --server URL           a running pullcache to pull through, e.g. http://mirror.lan:5000;
                         without it, one is started in-process over the configured data dir
                         (never do that on the data dir of a running pullcache serve: use
                         --server to warm a running mirror)
  --config FILE, --data-dir DIR, --upstream URL
                         for the in-process pullcache, as for serve (env PULLCACHE_CONFIG,
                         PULLCACHE_DATA_DIR, PULLCACHE_UPSTREAM)

--file, --compose and --kubernetes may be given more than once.

Output: one line per image (reference, digest, platforms, layers, bytes, and whether it was
already cached or fetched); on a terminal, a live progress line while each image downloads.
Exit status: 0 every image is cached; 1 an image failed or was skipped; 2 bad usage.
`

/** A reference that will be pulled, with where it was first found. */
interface Target {
  ref: ImageReference
  source: string
}

export const PREFETCH_OPTIONS = {
  ...CONFIG_FLAGS,
  file: { type: 'string', multiple: true },
  compose: { type: 'string', multiple: true },
  kubernetes: { type: 'string', multiple: true },
  platform: { type: 'string' },
  server: { type: 'string' },
} as const

export async function prefetch(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, PREFETCH_OPTIONS, PREFETCH_USAGE)
  if (values.help) {
    process.stdout.write(PREFETCH_USAGE)
    return EXIT_OK
  }

  let platforms: Platform[]
  try {
    platforms = parsePlatforms((values.platform as string | undefined) ?? 'linux/amd64')
  } catch (err) {
    if (err instanceof InvalidPlatform) throw new CliExit(EXIT_USAGE, err.message)
    throw err
  }
  const server = values.server as string | undefined
  if (server !== undefined && !/^https?:\/\/[^/]+\/?$/.test(server)) {
    throw new CliExit(
      EXIT_USAGE,
      `--server must be a URL like http://mirror.lan:5000, not ${JSON.stringify(server)}`,
    )
  }

  const found = gather(positionals, values)
  if (found.length === 0) {
    throw new CliExit(EXIT_USAGE, `no image references given\n\n${PREFETCH_USAGE}`)
  }

  const out = new Output()
  let problems = 0
  const targets = new Map<string, Target>()
  for (const f of found) {
    let ref: ImageReference
    try {
      if (f.error !== undefined) throw new InvalidReference(f.text, f.error)
      ref = parseImageReference(f.text)
    } catch (err) {
      if (!(err instanceof InvalidReference)) throw err
      out.problem(`skipped (${f.source}): ${err.message}`)
      problems++
      continue
    }
    if (!isDockerHubReference(ref)) {
      out.problem(
        `skipped ${ref.canonical} (${f.source}): not a Docker Hub image; pullcache mirrors Docker Hub only`,
      )
      problems++
      continue
    }
    if (!targets.has(ref.canonical)) targets.set(ref.canonical, { ref, source: f.source })
  }

  const results: PullResult[] = []
  let failed = 0
  if (targets.size > 0) {
    const endpoint = server === undefined ? await startInProcess(values) : undefined
    const puller = new Puller({ server: server ?? endpoint!.url })
    try {
      for (const { ref } of targets.values()) {
        const live = out.live(ref.canonical)
        try {
          const result = await puller.pull(ref, platforms, (p) => live.update(p.done, p.total))
          live.done(resultLine(result))
          results.push(result)
        } catch (err) {
          live.failed(`failed ${ref.canonical}: ${(err as Error).message}`)
          failed++
        }
      }
    } finally {
      await puller.close()
      await endpoint?.close(5_000)
    }
  }

  const fetched = results.filter((r) => !r.cached)
  const fetchedBytes = results.reduce((n, r) => n + r.fetchedBytes, 0)
  const parts = [
    `${results.length} of ${targets.size} image${targets.size === 1 ? '' : 's'} cached`,
    `${fetched.length} fetched (${humanBytes(fetchedBytes)})`,
    `${results.length - fetched.length} already cached`,
  ]
  if (failed > 0) parts.push(`${failed} failed`)
  if (problems > 0) parts.push(`${problems} skipped`)
  out.line(`prefetch: ${parts.join(', ')}`)
  return failed + problems === 0 ? EXIT_OK : EXIT_FAILED
}

/** Every reference from the arguments and the files, in the order given. */
function gather(positionals: string[], values: Record<string, unknown>): FoundReference[] {
  const found: FoundReference[] = positionals.map((text, i) => ({ text, source: `argument ${i + 1}` }))
  const files = (key: string) => (values[key] as string[] | undefined) ?? []
  try {
    for (const file of files('file')) found.push(...referencesFromList(read(file), file))
    for (const file of files('compose')) {
      const env = { ...dotEnvBeside(file), ...process.env }
      const result = referencesFromCompose(read(file), file, env)
      found.push(...result.found)
      for (const note of result.skipped) process.stderr.write(`pullcache: not pulled (${note})\n`)
    }
    for (const file of files('kubernetes')) found.push(...referencesFromKubernetes(read(file), file))
  } catch (err) {
    if (err instanceof SourceError) throw new CliExit(EXIT_USAGE, err.message)
    throw err
  }
  return found
}

function read(file: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch (err) {
    throw new CliExit(EXIT_USAGE, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`)
  }
}

/** Compose reads .env from the project directory, which is the Compose file's directory. */
function dotEnvBeside(file: string): Record<string, string> {
  try {
    return parseDotEnv(readFileSync(join(dirname(file), '.env'), 'utf8'))
  } catch {
    return {}
  }
}

/** A pullcache over the configured data dir, on a loopback port nobody else is told about. */
async function startInProcess(values: Record<string, unknown>): Promise<RunningServer> {
  const config = configFrom(values, { listen: '127.0.0.1:0', 'log.access': 'false' })
  // The output is this command's lines; the server only speaks up about trouble, on stderr.
  const log = createLogger(config.log.level === 'debug' ? 'debug' : 'warn', (line) =>
    process.stderr.write(line),
  )
  try {
    return await startServer(config, log)
  } catch (err) {
    throw new CliExit(EXIT_FAILED, `cannot start the in-process pullcache: ${(err as Error).message}`)
  }
}

function resultLine(r: PullResult): string {
  const fields = [r.reference, r.digest]
  if (r.platforms.length > 0) fields.push(`platforms=${r.platforms.join(',')}`)
  if (r.missingPlatforms.length > 0) fields.push(`missing=${r.missingPlatforms.join(',')}`)
  fields.push(`layers=${r.layers}`, `bytes=${r.bytes}`, r.cached ? 'cached' : 'fetched')
  return fields.join(' ')
}

/**
 * Result lines on stdout, problems on stderr. On a terminal, each image gets a progress line that
 * is rewritten in place while it downloads and replaced by its result line at the end.
 */
class Output {
  private readonly tty = process.stdout.isTTY === true

  line(text: string): void {
    process.stdout.write(`${text}\n`)
  }

  problem(text: string): void {
    process.stderr.write(`pullcache: ${text}\n`)
  }

  live(label: string): {
    update(done: number, total: number): void
    done(line: string): void
    failed(line: string): void
  } {
    let last = 0
    let shown = false
    const clear = () => {
      if (shown) process.stdout.write('\r\x1b[2K')
      shown = false
    }
    return {
      update: (done, total) => {
        if (!this.tty) return
        const now = Date.now()
        // A few redraws a second: enough to see it move, cheap for a fast local pull.
        if (now - last < 100 && done < total) return
        last = now
        const percent = total > 0 ? ` ${Math.floor((done / total) * 100)}%` : ''
        process.stdout.write(`\r\x1b[2K${label}  ${humanBytes(done)} / ${humanBytes(total)}${percent}`)
        shown = true
      },
      done: (line) => {
        clear()
        this.line(line)
      },
      failed: (line) => {
        clear()
        this.problem(line)
      },
    }
  }
}
