// Starts pullcache in-process on 127.0.0.1:0 with a fresh temp data dir, and gives tests a few
// ways to talk to it. Logs are captured, so a test can assert what was (and was not) logged.
// The data dir (unless the test gave one) and the config file are temp dirs: removed after the
// file at the latest (test/support/tmp.ts).

import { rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { loadConfig } from '../../src/config.js'
import { createLogger } from '../../src/log.js'
import { type RunningServer, startServer } from '../../src/server.js'
import { blobDigestOf } from './sha256.js'
import { tmpRoot } from './tmp.js'
import { waitFor } from './wait-for.js'

export interface TestMirror {
  url: string
  dataDir: string
  server: RunningServer
  logs: Record<string, unknown>[]
  /**
   * A request read to its end. For a whole blob (a GET answered 200), it resolves once the
   * download the request joined or caused has settled too (see settled()), so the test's next
   * step sees the store as a client arriving a moment later would.
   */
  get(path: string, headers?: Record<string, string>): Promise<TestResponse>
  head(path: string, headers?: Record<string, string>): Promise<TestResponse>
  /**
   * Waits until no download (of `digest`, when given) is in flight. A client has its last byte
   * as soon as the blob is verified; the store has it (file and row) once its fill has settled.
   */
  settled(digest?: string): Promise<void>
  /** Stops the server; keeps the data dir unless `wipe`. */
  close(opts?: { wipe?: boolean }): Promise<void>
}

export interface TestResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

export async function startMirror(opts: {
  upstream: string
  dataDir?: string
  env?: Record<string, string>
  /** Written to a config file, for keys that have no environment variable. */
  config?: Record<string, unknown>
}): Promise<TestMirror> {
  const dataDir = opts.dataDir ?? (await tmpRoot())
  let file: string | undefined
  if (opts.config) {
    file = join(await tmpRoot(), 'pullcache.json')
    await writeFile(file, JSON.stringify(opts.config))
  }
  const config = loadConfig({
    file,
    env: {
      PULLCACHE_LISTEN: '127.0.0.1:0',
      PULLCACHE_DATA_DIR: dataDir,
      PULLCACHE_UPSTREAM: opts.upstream,
      PULLCACHE_LOG_LEVEL: 'debug',
      ...opts.env,
    },
  })
  const logs: Record<string, unknown>[] = []
  const log = createLogger('debug', (line) => logs.push(JSON.parse(line) as Record<string, unknown>))
  const server = await startServer(config, log)
  const settled = async (digest?: string) => {
    await waitFor(
      async () => {
        const fills = server.mirrors.inflight().filter((f) => digest === undefined || f.digest === digest)
        await Promise.allSettled(fills.map((fill) => fill.done))
        return fills.length === 0
      },
      // An fsync on a busy disk may take a while; the wait is still bounded.
      { what: 'the downloads in flight to settle', timeoutMs: 30_000 },
    )
  }
  const call = async (method: 'GET' | 'HEAD', path: string, headers: Record<string, string> = {}) => {
    const res = await request(`${server.url}${path}`, { method, headers })
    const body = Buffer.from(await res.body.arrayBuffer())
    // A whole blob was sent: its download, if any, is verified and about to be stored.
    const digest = blobDigestOf(path)
    if (digest && method === 'GET' && res.statusCode === 200 && headers.range === undefined)
      await settled(digest)
    return { status: res.statusCode, headers: res.headers, body }
  }
  return {
    url: server.url,
    dataDir,
    server,
    logs,
    get: (path, headers) => call('GET', path, headers),
    head: (path, headers) => call('HEAD', path, headers),
    settled,
    close: async ({ wipe = true } = {}) => {
      await server.close(2_000)
      if (wipe) await rm(dataDir, { recursive: true, force: true })
    },
  }
}
