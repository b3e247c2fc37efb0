// `config check` prints fileForm(config): it must be a file --config accepts and that loads back
// to the same configuration, for every key the schema has (including sections added later),
// with no secret in it.

import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { z } from 'zod'
import { type Config, fileForm, loadConfig } from '../../src/config.js'
import { secret, toFileForm } from '../../src/config-file-form.js'
import { configSchema } from '../../src/config-schema.js'
import { formatDuration, formatSize, parseDuration, parseSize } from '../../src/units.js'
import { makeTestCa } from '../support/test-certs.js'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pullcache-file-form-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

let files = 0
async function write(content: unknown): Promise<string> {
  const path = join(dir, `config-${files++}.json`)
  await writeFile(path, JSON.stringify(content, null, 2))
  return path
}

/** A config as plain data: tag patterns compare by their text, not by their compiled function. */
function plain(config: Config): unknown {
  return JSON.parse(JSON.stringify(config))
}

/** Every key path the schema defines, down to the leaves ("upstream.url", "cache.pins"). */
function schemaKeys(schema: z.ZodType, prefix = ''): string[] {
  let node = schema
  // Through default, prefault, nullable and optional to the object, if it is one.
  while (!(node instanceof z.ZodObject)) {
    const inner = (node._zod.def as { innerType?: z.ZodType }).innerType
    if (inner === undefined) return [prefix]
    node = inner
  }
  return Object.entries(node.shape).flatMap(([key, child]) =>
    schemaKeys(child as z.ZodType, prefix === '' ? key : `${prefix}.${key}`),
  )
}

function get(value: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((v, k) => (v as Record<string, unknown>)?.[k], value)
}

/** Every key set away from its default, in the forms a person would write. */
const EVERYTHING = {
  listen: '127.0.0.1:5099',
  data_dir: '/srv/pullcache',
  offline: true,
  shutdown_grace: '25s',
  upstream: {
    host: 'registry.example:8443',
    url: 'https://registry.example:8443',
    username: 'mirror-bot',
    password_file: '/run/credentials/pullcache/upstream-password',
    connect_timeout: '1500ms',
    header_timeout: '2m',
    idle_timeout: '90s',
    max_concurrent_fetches: 7,
    connections: 9,
    rate_limit_reserve: 0,
    library_prefix: false,
  },
  upstreams: [
    {
      host: 'ghcr.io',
      url: 'https://ghcr.io',
      username: 'ci-bot',
      password_file: '/run/credentials/pullcache/ghcr-password',
      connect_timeout: '2s',
      header_timeout: '45s',
      idle_timeout: '1m',
      max_concurrent_fetches: 4,
      connections: 8,
      rate_limit_reserve: 3,
      library_prefix: true,
      budget_share: 0.3,
      tag_freshness: '10m',
    },
  ],
  cache: {
    tag_freshness: '1.5h',
    revalidate_timeout: '750ms',
    manifest_memory: '1.5GB',
    tag_freshness_rules: [
      { match: '*:latest', freshness: '5m' },
      { match: '/^v?\\d+\\.\\d+\\.\\d+$/', freshness: '30d' },
    ],
    max_size: '50GiB',
    high_water: 0.9,
    low_water: 0.5,
    max_unused_age: '14d',
    pins: ['library/nginx:1.27', 'myorg/**:*'],
    eviction_interval: '10m',
  },
  limits: { header_timeout: '12s', send_timeout: '90s', keepalive_timeout: '15s', max_connections: 300 },
  index: { flush_interval: '250ms', accounting_retention: '90d' },
  auth: { htpasswd: '/etc/pullcache/htpasswd', anonymous: false },
  admin: { allow: ['10.0.0.0/8', '::1'] },
  storage: {
    type: 's3',
    s3: {
      endpoint: 'http://127.0.0.1:6280',
      bucket: 'pullcache-blobs',
      prefix: 'site-a/',
      region: 'eu-west-1',
      force_path_style: true,
      access_key_id_file: null,
      secret_access_key_file: null,
      abandoned_upload_age: '12h',
      max_size: '500GiB',
      high_water: 0.9,
      low_water: 0.8,
      grace: '2h',
      journal_interval: '30s',
      eviction_interval: '10m',
      redirect: { enabled: true, ttl: '2m', public_endpoint: 'https://blobs.example.com' },
    },
  },
  log: { level: 'debug', access: false },
  // The secret file is read at load: the round trip below puts one in its place.
  cluster: {
    node_url: 'http://10.0.0.5:5000',
    peers: ['http://10.0.0.5:5000', 'http://10.0.0.6:5000'],
    peers_dns: 'http://pullcache.mirrors.svc:5000',
    peers_from_bucket: true,
    secret_file: '/etc/pullcache/cluster-secret',
  },
  // Headers are a secret (left out of the file form), so the round trip's example has none.
  notifications: {
    endpoints: [
      {
        name: 'audit',
        url: 'https://hooks.example/pullcache?team=infra',
        timeout: '750ms',
        backoff: '2s',
        max_attempts: 3,
        queue: 50,
        events: ['pull', 'evict'],
        ignore: { media_types: ['application/octet-stream'], actions: ['evict'] },
      },
    ],
  },
  // Files read at load: the round trip below puts certificates made by openssl in their place.
  tls: {
    cert: '/etc/pullcache/tls.crt',
    key: '/etc/pullcache/tls.key',
    client_ca: '/etc/pullcache/clients-ca.crt',
    client_auth: 'require',
  },
}

describe('the file form of a config', () => {
  test('the example sets every key the schema has (so the round trip below covers them all)', () => {
    for (const key of schemaKeys(configSchema)) {
      expect(get(EVERYTHING, key), `example file lacks ${key}`).toBeDefined()
    }
  })

  test('every key round-trips: file -> load -> file form -> load gives the same config', async () => {
    // The password file is read at load; it must exist.
    const secretDir = await mkdtemp(join(dir, 'secret-'))
    const passwordFile = join(secretDir, 'upstream-password')
    await writeFile(passwordFile, 'hunter2-very-secret\n')
    const ca = await makeTestCa()
    const server = await ca.server('pullcache')
    const tls = { ...EVERYTHING.tls, cert: server.cert, key: server.key, client_ca: ca.cert }
    const secretFile = join(secretDir, 'cluster-secret')
    await writeFile(secretFile, 'cluster-very-secret\n')
    const source = {
      ...EVERYTHING,
      upstream: { ...EVERYTHING.upstream, password_file: passwordFile },
      upstreams: EVERYTHING.upstreams.map((u) => ({ ...u, password_file: passwordFile })),
      cluster: { ...EVERYTHING.cluster, secret_file: secretFile },
      tls,
    }
    const first = loadConfig({ file: await write(source), env: {} })
    expect(first.cluster.secret).toBe('cluster-very-secret')
    const printed = fileForm(first)
    expect(JSON.stringify(printed)).not.toContain('hunter2')
    expect(JSON.stringify(printed)).not.toContain('cluster-very-secret')
    expect(printed.tls).toEqual(tls)
    const second = loadConfig({ file: await write(printed), env: {} })
    expect(plain(second)).toEqual(plain(first))
    expect(fileForm(second)).toEqual(printed)
    // Written in the units people use, not as raw milliseconds and bytes.
    expect(printed).toMatchObject({
      listen: '127.0.0.1:5099',
      shutdown_grace: '25s',
      upstream: { connect_timeout: '1500ms', header_timeout: '2m' },
      cache: {
        max_size: '50GiB',
        manifest_memory: '1500MB',
        tag_freshness: '90m',
        pins: EVERYTHING.cache.pins,
      },
    })
  })

  test('the embedded defaults print as a file holding every schema key, which loads back', async () => {
    const defaults = loadConfig({ env: {} })
    const printed = fileForm(defaults)
    for (const key of schemaKeys(configSchema)) {
      expect(get(printed, key), `file form lacks ${key}`).not.toBeUndefined()
    }
    expect(plain(loadConfig({ file: await write(printed), env: {} }))).toEqual(plain(defaults))
    expect(printed).toMatchObject({ listen: ':5000', upstream: { url: 'https://registry-1.docker.io' } })
  })

  test('conf/pullcache.json lists every schema key, and loads to the embedded defaults', async () => {
    const path = new URL('../../conf/pullcache.json', import.meta.url)
    const shipped: unknown = JSON.parse(await readFile(path, 'utf8'))
    for (const key of schemaKeys(configSchema)) {
      expect(get(shipped, key), `conf/pullcache.json lacks ${key}`).not.toBeUndefined()
    }
    expect(plain(loadConfig({ file: path.pathname, env: {} }))).toEqual(plain(loadConfig({ env: {} })))
  })

  test('IPv6 listen addresses keep their brackets', async () => {
    const config = loadConfig({ env: { PULLCACHE_LISTEN: '[::1]:5001' } })
    expect(fileForm(config).listen).toBe('[::1]:5001')
    expect(loadConfig({ file: await write(fileForm(config)), env: {} }).listen).toEqual(config.listen)
  })

  test("an endpoint's header values (tokens) are never in the file form, which still loads", async () => {
    const source = {
      notifications: {
        endpoints: [
          { name: 'hook', url: 'http://127.0.0.1:9/x', headers: { Authorization: 'Bearer s3cret-token' } },
        ],
      },
    }
    const config = loadConfig({ file: await write(source), env: {} })
    expect(config.notifications.endpoints[0]!.headers).toEqual({ Authorization: 'Bearer s3cret-token' })
    const printed = fileForm(config)
    expect(JSON.stringify(printed)).not.toContain('s3cret-token')
    const again = loadConfig({ file: await write(printed), env: {} })
    expect(again.notifications.endpoints[0]).toMatchObject({
      name: 'hook',
      url: 'http://127.0.0.1:9/x',
      headers: {},
    })
  })

  test('a password from the environment is in the config but never in its file form', () => {
    const config = loadConfig({
      env: { PULLCACHE_UPSTREAM_USERNAME: 'me', PULLCACHE_UPSTREAM_PASSWORD: 'hunter2' },
    })
    expect(config.upstream.password).toBe('hunter2')
    const printed = fileForm(config)
    expect(JSON.stringify(printed)).not.toContain('hunter2')
    expect(printed.upstream).not.toHaveProperty('password')
  })
})

describe('toFileForm on any schema', () => {
  test('a key marked secret is left out, and what is printed still parses', () => {
    const schema = z.strictObject({
      user: z.string().default('anonymous'),
      token: secret(z.string().nullable().default(null)),
      nested: z
        .strictObject({ key: secret(z.string()).optional(), when: z.string() })
        .prefault({ when: 'now' }),
    })
    const value = schema.parse({
      user: 'me',
      token: 's3cret-token',
      nested: { key: 's3cret-key', when: 'later' },
    })
    const printed = toFileForm(schema, value)
    expect(printed).toEqual({ user: 'me', nested: { when: 'later' } })
    expect(schema.parse(printed)).toEqual({ user: 'me', token: null, nested: { when: 'later' } })
  })

  test('a transform without a file form is an error naming its key, not a silent wrong value', () => {
    const schema = z.strictObject({ section: z.strictObject({ port: z.string().transform(Number) }) })
    expect(() => toFileForm(schema, schema.parse({ section: { port: '80' } }))).toThrow(
      'section.port: no file form for a pipe schema',
    )
  })
})

describe('durations and sizes written back', () => {
  test('in the largest unit that keeps the exact value', () => {
    expect(formatDuration(60_000)).toBe('1m')
    expect(formatDuration(90_000)).toBe('90s')
    expect(formatDuration(86_400_000 * 30)).toBe('30d')
    expect(formatDuration(1_500)).toBe('1500ms')
    expect(formatDuration(0)).toBe('0ms')
    expect(formatSize(64 * 2 ** 20)).toBe('64MiB')
    expect(formatSize(5e10)).toBe('50GB')
    expect(formatSize(1023)).toBe('1023B')
    expect(formatSize(0)).toBe('0B')
  })

  test('parse(format(n)) is n for any whole number of milliseconds or bytes', () => {
    fc.assert(
      fc.property(fc.nat({ max: Number.MAX_SAFE_INTEGER }), (n) => {
        expect(parseDuration(formatDuration(n))).toBe(n)
      }),
    )
    fc.assert(
      fc.property(fc.nat({ max: 2 ** 50 }), (n) => {
        expect(parseSize(formatSize(n))).toBe(n)
      }),
    )
    // Values that are multiples of a unit, which random numbers rarely are.
    fc.assert(
      fc.property(
        fc.nat({ max: 10_000 }),
        fc.constantFrom(1, 1e3, 2 ** 10, 1e6, 2 ** 20, 2 ** 30, 1e12),
        (k, unit) => {
          expect(parseSize(formatSize(k * unit))).toBe(k * unit)
        },
      ),
    )
  })
})
