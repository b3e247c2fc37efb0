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
  --tls-cert FILE        serve HTTPS with this PEM certificate and its chain (env PULLCACHE_TLS_CERT)
  --tls-key FILE         the certificate's PEM private key (env PULLCACHE_TLS_KEY)
  --tls-client-ca FILE   CA whose client certificates sign clients in (env PULLCACHE_TLS_CLIENT_CA);
                         PULLCACHE_TLS_CLIENT_AUTH=require refuses handshakes without one

The upstream account comes from PULLCACHE_UPSTREAM_USERNAME with PULLCACHE_UPSTREAM_PASSWORD
or PULLCACHE_UPSTREAM_PASSWORD_FILE; a password is never read from the config file.

SIGHUP reads the config again: accounts, freshness, budget and the TLS files (a renewed
certificate) apply without a restart; connections already open keep going.
`

export const SERVE_OPTIONS = {
  ...CONFIG_FLAGS,
  listen: { type: 'string' },
  'tag-freshness': { type: 'string' },
  'log-level': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-client-ca': { type: 'string' },
} as const

export async function serve(args: string[]): Promise<number> {
  const { values } = parseCommand(args, SERVE_OPTIONS, SERVE_USAGE)
  if (values.help) {
    process.stdout.write(SERVE_USAGE)
    return EXIT_OK
  }
  const config = configFrom(values)
  const log = createLogger(config.log.level)
  // SIGHUP: read the config file and environment again and apply what can change live. The
  // handler is in place before the server starts: Node's default for SIGHUP ends the process,
  // and a reload sent while the store opens (a deploy right after a start) must not kill it; it
  // is applied once the server runs.
  let server: Awaited<ReturnType<typeof startServer>> | undefined
  let reloadWaiting = false
  const reload = () => {
    if (server === undefined) {
      reloadWaiting = true
      return
    }
    try {
      server.reload(configFrom(values))
    } catch (err) {
      log.error('config.reload_failed', { error: err instanceof CliExit ? err.message : err })
    }
  }
  process.on('SIGHUP', reload)
  try {
    server = await startServer(config, log)
  } catch (err) {
    log.error('start.failed', { error: err })
    throw new CliExit(EXIT_FAILED, `cannot start: ${(err as Error).message}`)
  }
  const running = server
  if (reloadWaiting) reload()

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
      running.close().then(
        () => resolve(EXIT_OK),
        (err: Error) => {
          log.error('stop.failed', { error: err })
          resolve(EXIT_FAILED)
        },
      )
    }
    process.on('SIGTERM', () => stop('SIGTERM'))
    process.on('SIGINT', () => stop('SIGINT'))
  })
}
