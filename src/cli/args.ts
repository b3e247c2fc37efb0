// What every subcommand shares: parsing its flags, loading the config the same way serve does,
// and failing with the exit codes scripts rely on (0 done, 1 failed, 2 bad usage or config).

import { parseArgs } from 'node:util'
import { type Config, ConfigError, loadConfig } from '../config.js'

export const EXIT_OK = 0
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2

/** Thrown to end a command with a message and an exit code; main prints it. */
export class CliExit extends Error {
  readonly code: number
  constructor(code: number, message: string) {
    super(message)
    this.name = 'CliExit'
    this.code = code
  }
}

/** Flags every command that reads the store accepts, with the config key each sets. */
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

/** Loads the config with --config, --data-dir and --upstream applied on top. */
export function configFrom(
  values: Record<string, unknown>,
  extra: Record<string, string | undefined> = {},
): Config {
  const flags: Record<string, string | undefined> = { ...extra }
  if (typeof values['data-dir'] === 'string') flags.data_dir = values['data-dir']
  if (typeof values.upstream === 'string') flags['upstream.url'] = values.upstream
  try {
    return loadConfig({ file: typeof values.config === 'string' ? values.config : undefined, flags })
  } catch (err) {
    if (err instanceof ConfigError) throw new CliExit(EXIT_USAGE, err.message)
    throw err
  }
}
