// `pullcache serve`: run the mirror until SIGTERM or SIGINT, then drain and exit 0.

import { createLogger } from '../log.js'
import { startServer } from '../server.js'
import { CliExit, CONFIG_FLAGS, configFrom, EXIT_FAILED, EXIT_OK, parseCommand } from './args.js'

export const SERVE_USAGE = `Usage: pullcache serve [options]

Runs the mirror. Each option overrides the config file and the environment.

  --config FILE          JSON config file (default: embedded defaults; env PULLCACHE_CONFIG)
  --listen HOST:PORT     where to listen (default :5000; env PULLCACHE_LISTEN)
  --data-dir DIR         store and index (default ./data; env PULLCACHE_DATA_DIR)
  --upstream URL         registry to mirror (default https://registry-1.docker.io; env PULLCACHE_UPSTREAM)
  --tag-freshness DUR    how long a tag is served without asking upstream (default 60s;
                         env PULLCACHE_TAG_FRESHNESS)
  --log-level LEVEL      debug, info, warn or error (default info; env PULLCACHE_LOG_LEVEL)

The upstream account comes from PULLCACHE_UPSTREAM_USERNAME with PULLCACHE_UPSTREAM_PASSWORD
or PULLCACHE_UPSTREAM_PASSWORD_FILE; a password is never read from the config file.
`

export const SERVE_OPTIONS = {
  ...CONFIG_FLAGS,
  listen: { type: 'string' },
  'tag-freshness': { type: 'string' },
  'log-level': { type: 'string' },
} as const

export async function serve(args: string[]): Promise<number> {
  const { values } = parseCommand(args, SERVE_OPTIONS, SERVE_USAGE)
  if (values.help) {
    process.stdout.write(SERVE_USAGE)
    return EXIT_OK
  }
  const config = configFrom(values)
  const log = createLogger(config.log.level)
  let server: Awaited<ReturnType<typeof startServer>>
  try {
    server = await startServer(config, log)
  } catch (err) {
    log.error('start.failed', { error: err })
    throw new CliExit(EXIT_FAILED, `cannot start: ${(err as Error).message}`)
  }

  return new Promise<number>((resolve) => {
    let stopping = false
    const stop = (signal: string) => {
      if (stopping) {
        log.warn('stop.forced', { signal })
        resolve(EXIT_FAILED)
        return
      }
      stopping = true
      log.info('stopping', { signal })
      server.close().then(
        () => resolve(EXIT_OK),
        (err: Error) => {
          log.error('stop.failed', { error: err })
          resolve(EXIT_FAILED)
        },
      )
    }
    process.on('SIGTERM', () => stop('SIGTERM'))
    process.on('SIGINT', () => stop('SIGINT'))
    // SIGHUP: read the config file and environment again and apply what can change live.
    process.on('SIGHUP', () => {
      try {
        server.reload(configFrom(values))
      } catch (err) {
        log.error('config.reload_failed', { error: err instanceof CliExit ? err.message : err })
      }
    })
  })
}
