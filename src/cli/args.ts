// What every subcommand shares: parsing its flags, loading the config the same way serve does,
// and failing with the exit codes scripts rely on (0 done, 1 failed, 2 bad usage or config).

import { parseArgs } from 'node:util'
import { type Config, ConfigError, envNameOf, loadConfig } from '../config.js'

export const EXIT_OK = 0
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2

/** Thrown to end a command with a message and an exit code; main prints it. */
export class CliExit extends Error {
  readonly code = 'CLI_EXIT'
  /** The process exit status this ends the command with. */
  readonly exitCode: number
  constructor(exitCode: number, message: string) {
    super(message)
    this.name = 'CliExit'
    this.exitCode = exitCode
  }
}

/**
 * Every flag that sets a config key, whichever commands take it -> that key. configFrom()
 * applies them; --help names each one's environment variable (config.ts's table, through
 * flagEnvName), which test/unit/cli-help.test.ts checks for every command.
 */
export const KEY_FLAGS: Readonly<Record<string, string>> = {
  'data-dir': 'data_dir',
  upstream: 'upstream.url',
  listen: 'listen',
  'tag-freshness': 'cache.tag_freshness',
  'log-level': 'log.level',
  'max-size': 'cache.max_size',
  'max-unused-age': 'cache.max_unused_age',
  'tls-cert': 'tls.cert',
  'tls-key': 'tls.key',
  'tls-client-ca': 'tls.client_ca',
}

/** The environment variable that does what a flag does, or undefined when there is none. */
export function flagEnvName(flag: string): string | undefined {
  if (flag === 'config') return 'PULLCACHE_CONFIG'
  const key = KEY_FLAGS[flag]
  return key === undefined ? undefined : envNameOf(key)
}

/** The config keys the given flag values set, for loadConfig's `flags`. */
export function keyFlags(values: Record<string, unknown>): Record<string, string> {
  const flags: Record<string, string> = {}
  for (const [flag, key] of Object.entries(KEY_FLAGS)) {
    const value = values[flag]
    if (typeof value === 'string') flags[key] = value
  }
  return flags
}

/** Flags every command that reads the store accepts. */
export const CONFIG_FLAGS = {
  config: { type: 'string' },
  'data-dir': { type: 'string' },
  upstream: { type: 'string' },
} as const

type Options = Parameters<typeof parseArgs>[0] extends infer O
  ? O extends { options?: infer P }
    ? P
    : never
  : never

export function parseCommand<T extends NonNullable<Options>>(args: string[], options: T, usage: string) {
  try {
    return parseArgs({
      args,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals: true,
    })
  } catch (err) {
    throw new CliExit(EXIT_USAGE, `${(err as Error).message}\n\n${usage}`)
  }
}

/** Loads the config from --config, with `extra` and then every KEY_FLAGS flag given on top. */
export function configFrom(
  values: Record<string, unknown>,
  extra: Record<string, string | undefined> = {},
): Config {
  const flags: Record<string, string | undefined> = { ...extra, ...keyFlags(values) }
  try {
    return loadConfig({ file: typeof values.config === 'string' ? values.config : undefined, flags })
  } catch (err) {
    if (err instanceof ConfigError) throw new CliExit(EXIT_USAGE, err.message)
    throw err
  }
}
