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
import { tmpRoot } from './tmp.js'

export interface TestMirror {
  url: string
  dataDir: string
  server: RunningServer
  logs: Record<string, unknown>[]
  get(path: string, headers?: Record<string, string>): Promise<TestResponse>
  head(path: string, headers?: Record<string, string>): Promise<TestResponse>
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
  const call = async (method: 'GET' | 'HEAD', path: string, headers: Record<string, string> = {}) => {
    const res = await request(`${server.url}${path}`, { method, headers })
    const body = Buffer.from(await res.body.arrayBuffer())
    return { status: res.statusCode, headers: res.headers, body }
  }
  return {
    url: server.url,
    dataDir,
    server,
    logs,
    get: (path, headers) => call('GET', path, headers),
    head: (path, headers) => call('HEAD', path, headers),
    close: async ({ wipe = true } = {}) => {
      await server.close(2_000)
      if (wipe) await rm(dataDir, { recursive: true, force: true })
    },
  }
}
