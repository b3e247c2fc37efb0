// A real S3 server (test/support/s3-server.sh: Swift's S3 API) for one test file: started in
// beforeAll with its own state dir, stopped and removed in afterAll. Each file gets its own, on
// five free ports of 6200-6299 (the script's range): a base is picked at random and another
// tried when the script finds one taken, so files run side by side never share a server.

import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { S3Client } from '@aws-sdk/client-s3'
import { afterAll, beforeAll } from 'vitest'
import type { BucketSettings } from '../../src/store/shared-tier.js'

const SCRIPT = join(import.meta.dirname, 's3-server.sh')
const run = promisify(execFile)

export interface S3Server {
  endpoint: string
  accessKeyId: string
  secretAccessKey: string
  region: string
  /** Seconds the start took (config, rings, five daemons, all answering). */
  startSeconds: number
  /** The env a pullcache needs to keep its blobs in `bucket` on this server. */
  env(bucket: string, prefix?: string): Record<string, string>
  /** The settings pullcache's own S3 code takes for `bucket` here (no redirects). */
  settings(bucket: string, prefix?: string): BucketSettings
  /** An S3 client of the test's own, to look at what pullcache wrote; the caller destroys it. */
  client(): S3Client
}

/**
 * The server a start script described on stdout (its `S3_*=` lines), as tests use it. The
 * test's client sends checksums only where the API requires them, as pullcache's does: not
 * every store takes the SDK's default trailers.
 */
export function s3ServerFrom(stdout: string, startedAt: number): S3Server {
  const vars = Object.fromEntries(
    stdout
      .trim()
      .split('\n')
      .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
  )
  const endpoint = vars.S3_ENDPOINT!
  const region = vars.S3_REGION!
  const credentials = { accessKeyId: vars.S3_ACCESS_KEY_ID!, secretAccessKey: vars.S3_SECRET_ACCESS_KEY! }
  return {
    endpoint,
    region,
    ...credentials,
    startSeconds: (Date.now() - startedAt) / 1000,
    env: (bucket, prefix = '') => ({
      PULLCACHE_STORAGE: 's3',
      PULLCACHE_S3_ENDPOINT: endpoint,
      PULLCACHE_S3_BUCKET: bucket,
      PULLCACHE_S3_PREFIX: prefix,
      PULLCACHE_S3_REGION: region,
      PULLCACHE_S3_FORCE_PATH_STYLE: 'true',
      AWS_ACCESS_KEY_ID: credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    }),
    settings: (bucket, prefix = '') => ({
      endpoint,
      bucket,
      prefix,
      region,
      forcePathStyle: true,
      credentials: { ...credentials },
      publicEndpoint: null,
      redirectTtlSeconds: null,
    }),
    client: () =>
      new S3Client({
        endpoint,
        region,
        forcePathStyle: true,
        credentials: { ...credentials },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      }),
  }
}

export async function startS3Server(): Promise<S3Server & { stop(): Promise<void> }> {
  const state = await mkdtemp(join(tmpdir(), 'pullcache-s3-'))
  const stop = async () => {
    await run('bash', [SCRIPT, 'stop'], { env: { ...process.env, S3_STATE: state } }).catch(() => {})
    await rm(state, { recursive: true, force: true, maxRetries: 3 })
  }
  const started = Date.now()
  for (let attempt = 0; ; attempt++) {
    const base = 6200 + 5 * Math.floor(Math.random() * 19) // 6200..6290: the base and 4 more
    try {
      const { stdout } = await run('bash', [SCRIPT, 'start'], {
        env: { ...process.env, S3_STATE: state, S3_PORT: String(base) },
      })
      return { ...s3ServerFrom(stdout, started), stop }
    } catch (err) {
      // Exit 3: a port was taken (another file's server, or anything else); try other ports.
      if ((err as { code?: unknown }).code === 3 && attempt < 10) continue
      await stop()
      throw err
    }
  }
}

/** One S3 server for the test file that calls this (at its top level). */
export function useS3Server(): { readonly server: S3Server } {
  return serverPerFile(startS3Server, 'the S3 server')
}

/**
 * A server started by `start` before the calling test file's tests and stopped after them;
 * `what` names it in the error of a test that asks for it too early.
 */
export function serverPerFile(
  start: () => Promise<S3Server & { stop(): Promise<void> }>,
  what: string,
  startTimeoutMs?: number,
): { readonly server: S3Server } {
  let server: Awaited<ReturnType<typeof start>> | undefined
  beforeAll(async () => {
    server = await start()
  }, startTimeoutMs)
  afterAll(async () => {
    await server?.stop()
  })
  return {
    get server() {
      if (server === undefined) throw new Error(`${what} starts in beforeAll`)
      return server
    },
  }
}
