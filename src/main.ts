#!/usr/bin/env -S node --max-semi-space-size=2 --liftoff-only
// pullcache's command line: one module per command under cli/, each returning its exit code.
// Exit codes scripts can rely on: 0 done, 1 failed, 2 bad usage or configuration.

import { CliExit, EXIT_FAILED, EXIT_OK, EXIT_USAGE } from './cli/args.js'
import { VERSION } from './version.js'

// Each command's module is imported only when that command runs: a module once loaded stays in
// memory for the life of the process, and `serve` runs for months. Loading every command here
// kept the archive code (tar-stream), prefetch (yaml, a second undici client) and the store
// checks resident in every server for nothing.
const COMMANDS: Record<string, { run: (args: string[]) => Promise<number>; summary: string }> = {
  serve: { run: async (a) => (await import('./cli/serve.js')).serve(a), summary: 'run the mirror' },
  stats: {
    run: async (a) => (await import('./cli/stats.js')).stats(a),
    summary: 'hit rates, bytes saved and pulls avoided, from the index',
  },
  gc: {
    run: async (a) => (await import('./cli/gc.js')).gc(a),
    summary: 'remove what the eviction policy says should go (--dry-run to list it)',
  },
  config: {
    run: async (a) => (await import('./cli/config-check.js')).configCommand(a),
    summary: 'config check: validate the configuration and print it as a config file, no secrets',
  },
  verify: {
    run: async (a) => (await import('./cli/verify.js')).verify(a),
    summary: 're-hash the store and compare it with the index (--repair to fix)',
  },
  prefetch: {
    run: async (a) => (await import('./cli/prefetch.js')).prefetch(a),
    summary: 'warm the cache from image references, Compose or Kubernetes files',
  },
  export: {
    run: async (a) => (await import('./cli/export.js')).exportArchive(a),
    summary: 'write cached images to an archive for an air-gapped pullcache',
  },
  import: {
    run: async (a) => (await import('./cli/import.js')).importArchiveCommand(a),
    summary: 'load an archive written by export, verifying every digest',
  },
  cluster: {
    run: async (a) => (await import('./cli/cluster.js')).clusterCommand(a),
    summary: 'cluster check: whether the configured nodes answer and agree',
  },
}

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length))
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`)
  return `Usage: pullcache <command> [options]

Commands:
${lines.join('\n')}

Run 'pullcache <command> --help' for a command's options.
  -v, --version   print the version
`
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(usage())
    return EXIT_OK
  }
  if (command === '-v' || command === '--version' || command === 'version') {
    process.stdout.write(`pullcache ${VERSION}\n`)
    return EXIT_OK
  }
  const found = COMMANDS[command]
  if (!found) throw new CliExit(EXIT_USAGE, `unknown command ${JSON.stringify(command)}\n\n${usage()}`)
  return found.run(rest)
}

/**
 * Ends the process with `code` once stdout and stderr have taken everything written to them.
 * Writes to a pipe complete asynchronously, so exiting at once cut a large output at the pipe's
 * buffer size (`pullcache stats --json | jq` got a truncated document). A write of nothing
 * completes after every write before it, which is the moment to go. The exit itself stays
 * explicit: a `serve` stopped by a second signal must end even while its first close still runs.
 */
function exitWhenFlushed(code: number): void {
  process.exitCode = code
  let pending = 2
  const flushed = (err?: Error | null) => {
    // A stream that failed (the reader went away) did not take everything.
    if (err) process.exitCode = EXIT_FAILED
    if (--pending === 0) process.exit()
  }
  process.stdout.write('', flushed)
  process.stderr.write('', flushed)
}

// A reader that goes away (`| head`) leaves nobody to write for: end at once, and without a
// stack trace, but not with success, since not everything was delivered.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err
  process.exit(EXIT_FAILED)
})

main(process.argv.slice(2)).then(exitWhenFlushed, (err: unknown) => {
  if (err instanceof CliExit) {
    process.stderr.write(`pullcache: ${err.message}\n`)
    exitWhenFlushed(err.exitCode)
    return
  }
  process.stderr.write(`pullcache: ${(err as Error).stack ?? String(err)}\n`)
  exitWhenFlushed(EXIT_FAILED)
})
