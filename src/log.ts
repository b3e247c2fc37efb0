// One JSON object per line on stdout; journald and every log shipper take that as it is.
// The logger is a value handed to whoever needs it, never a module-level global, so tests can
// capture it. Nothing here ever receives a header map or a credential: callers pass only the
// fields they mean to log, and errors are reduced to their message and code.

export type Level = 'debug' | 'info' | 'warn' | 'error'

const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 }

export interface Logger {
  debug(event: string, fields?: Record<string, unknown>): void
  info(event: string, fields?: Record<string, unknown>): void
  warn(event: string, fields?: Record<string, unknown>): void
  error(event: string, fields?: Record<string, unknown>): void
}

export function createLogger(
  level: Level = 'info',
  write: (line: string) => void = (line) => process.stdout.write(line),
): Logger {
  const emit = (at: Level, event: string, fields?: Record<string, unknown>) => {
    if (RANK[at] < RANK[level]) return
    write(`${JSON.stringify({ time: new Date().toISOString(), level: at, event, ...fields }, replacer)}\n`)
  }
  return {
    debug: (event, fields) => emit('debug', event, fields),
    info: (event, fields) => emit('info', event, fields),
    warn: (event, fields) => emit('warn', event, fields),
    error: (event, fields) => emit('error', event, fields),
  }
}

/** Errors become {name, message, code}: no stacks in the log, and no request objects. */
function replacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code
    const out: Record<string, unknown> = { name: value.name, message: value.message }
    if (code !== undefined) out.code = code
    if (value.cause instanceof Error) out.cause = value.cause.message
    return out
  }
  return value
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} }
