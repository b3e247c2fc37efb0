// `pullcache config check`: load the config exactly as serve would (embedded defaults, the file,
// PULLCACHE_* environment variables, flags) and print the result as a config file that --config
// reads back to the same configuration, with no secret in it; or every problem at once with its
// path. Meant for deploy scripts and for "why does serve not start".

import { type Config, ConfigError, fileForm, loadConfig } from '../config.js'
import { CliExit, CONFIG_FLAGS, EXIT_OK, EXIT_USAGE, keyFlags, parseCommand } from './args.js'

export const CONFIG_USAGE = `Usage: pullcache config check [options]

Validates the configuration the way pullcache serve loads it: the embedded defaults, the JSON
file, then PULLCACHE_* environment variables, then these flags. Prints the effective
configuration as a JSON config file that --config accepts and loads back unchanged, or every
problem with its path. Secrets are never printed: the upstream password stays where it comes
from (PULLCACHE_UPSTREAM_PASSWORD, or the file upstream.password_file names), and the headers of
notification endpoints are left out, which a note on stderr says.

  --config FILE          JSON config file (default: embedded defaults; env PULLCACHE_CONFIG)
  --data-dir DIR         as serve --data-dir (env PULLCACHE_DATA_DIR)
  --upstream URL         as serve --upstream (env PULLCACHE_UPSTREAM)

Exit status: 0 valid; 2 invalid (every problem is printed) or bad usage.
`

export const CONFIG_OPTIONS = CONFIG_FLAGS

export async function configCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, CONFIG_OPTIONS, CONFIG_USAGE)
  if (values.help) {
    process.stdout.write(CONFIG_USAGE)
    return EXIT_OK
  }
  const [sub, ...extra] = positionals
  if (sub !== 'check') {
    const what = sub === undefined ? 'missing subcommand' : `unknown subcommand ${JSON.stringify(sub)}`
    throw new CliExit(EXIT_USAGE, `config: ${what}\n\n${CONFIG_USAGE}`)
  }
  if (extra.length > 0) {
    throw new CliExit(EXIT_USAGE, `config check: unexpected argument ${JSON.stringify(extra[0])}`)
  }
  const flags = keyFlags(values)
  const file = (values.config as string | undefined) ?? process.env.PULLCACHE_CONFIG
  try {
    const config = loadConfig({ file, flags })
    process.stdout.write(`${JSON.stringify(fileForm(config), null, 2)}\n`)
    const note = secretNote(config)
    if (note) process.stderr.write(`pullcache: ${note}\n`)
    return EXIT_OK
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    const from = file === undefined || file === '' ? 'the environment' : `${file} with the environment`
    const count = `${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}`
    throw new CliExit(
      EXIT_USAGE,
      `invalid configuration (${from}), ${count}:\n  ${err.problems.join('\n  ')}`,
    )
  }
}

/** Where the secrets left out of the printout come from, or undefined when there are none. */
function secretNote(config: Config): string | undefined {
  const notes: string[] = []
  if (config.upstream.password !== null) {
    const from =
      config.upstream.password_file === null
        ? 'PULLCACHE_UPSTREAM_PASSWORD in the environment'
        : `upstream.password_file (${config.upstream.password_file})`
    notes.push(`the upstream password is not printed; it comes from ${from}`)
  }
  if (config.storage.credentials !== null) {
    const from =
      config.storage.s3.access_key_id_file === null
        ? 'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment'
        : 'the files storage.s3.access_key_id_file and secret_access_key_file name'
    notes.push(`the bucket's keys are not printed; they come from ${from}`)
  }
  // Header values often carry a token: the headers are left out, their endpoints named.
  const withHeaders = config.notifications.endpoints.filter((e) => Object.keys(e.headers).length > 0)
  if (withHeaders.length > 0) {
    notes.push(
      `the headers of notification endpoints ${withHeaders.map((e) => e.name).join(', ')} are not printed`,
    )
  }
  return notes.length === 0 ? undefined : notes.join('; ')
}
