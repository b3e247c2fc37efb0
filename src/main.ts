#!/usr/bin/env node
// pullcache's command line: args -> config -> open store and index -> app -> serve -> signals.
// Exit codes scripts can rely on: 0 done, 1 failed while running, 2 bad usage or configuration.

import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { type Config, ConfigError, loadConfig } from './config.js'
import { createLogger } from './log.js'
import { startServer } from './server.js'

const VERSION = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version

const USAGE = `Usage: pullcache <command> [options]

Commands:
  serve        run the mirror

Options for serve (each overrides the config file and the environment):
  --config FILE          JSON config file (default: embedded defaults; env PULLCACHE_CONFIG)
  --listen HOST:PORT     where to listen (default :5000; env PULLCACHE_LISTEN)
  --data-dir DIR         store and index (default ./data; env PULLCACHE_DATA_DIR)
  --upstream URL         registry to mirror (default https://registry-1.docker.io; env PULLCACHE_UPSTREAM)
  --tag-freshness DUR    how long a tag is served without asking upstream (default 60s)
  --log-level LEVEL      debug, info, warn or error (default info)

The upstream account comes from PULLCACHE_UPSTREAM_USERNAME with PULLCACHE_UPSTREAM_PASSWORD
or PULLCACHE_UPSTREAM_PASSWORD_FILE; a password is never read from the config file.

  -h, --help             this text
  -v, --version          print the version
`

const SERVE_FLAGS = {
  config: 'config',
  listen: 'listen',
  'data-dir': 'data_dir',
  upstream: 'upstream.url',
  'tag-freshness': 'cache.tag_freshness',
  'log-level': 'log.level',
} as const

function fail(message: string, code = 2): never {
  process.stderr.write(`pullcache: ${message}\n`)
  process.exit(code)
}

async function serve(args: string[]): Promise<void> {
  let values: Record<string, string | boolean | undefined>
  try {
    ;({ values } = parseArgs({
      args,
      options: {
        ...Object.fromEntries(Object.keys(SERVE_FLAGS).map((k) => [k, { type: 'string' as const }])),
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }))
  } catch (err) {
    fail(`${(err as Error).message}\n\n${USAGE}`)
  }
  if (values.help) {
    process.stdout.write(USAGE)
    return
  }
  const flags: Record<string, string | undefined> = {}
  for (const [flag, key] of Object.entries(SERVE_FLAGS)) {
    if (flag !== 'config' && typeof values[flag] === 'string') flags[key] = values[flag]
  }
  let config: Config
  try {
    config = loadConfig({ file: values.config as string | undefined, flags })
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message)
    throw err
  }
  const log = createLogger(config.log.level)
  const server = await startServer(config, log).catch((err: Error) => {
    log.error('start.failed', { error: err })
    fail(`cannot start: ${err.message}`, 1)
  })

  let stopping = false
  const stop = (signal: string) => {
    if (stopping) {
      log.warn('stop.forced', { signal })
      process.exit(1)
    }
    stopping = true
    log.info('stopping', { signal })
    server.close(10_000).then(
      () => process.exit(0),
      (err: Error) => {
        log.error('stop.failed', { error: err })
        process.exit(1)
      },
    )
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  switch (command) {
    case 'serve':
      return serve(rest)
    case '-v':
    case '--version':
    case 'version':
      process.stdout.write(`pullcache ${VERSION}\n`)
      return
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE)
      return
    default:
      fail(`unknown command ${JSON.stringify(command)}\n\n${USAGE}`)
  }
}

main(process.argv.slice(2)).catch((err: Error) => fail(err.stack ?? err.message, 1))
