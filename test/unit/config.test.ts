import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { fileForm, loadConfig } from '../../src/config.js'
import { hostOfHeader, sameOrSubdomain } from '../../src/redirect-scope.js'
import { compileTagPattern } from '../../src/tag-pattern.js'
import { parseDuration, parseSize } from '../../src/units.js'
import { problems } from '../support/config-problems.js'
import { tmpRoot } from '../support/tmp.js'

async function file(content: unknown): Promise<string> {
  const dir = await tmpRoot('pullcache-conf')
  const path = join(dir, 'pullcache.json')
  await writeFile(path, typeof content === 'string' ? content : JSON.stringify(content))
  return path
}

describe('config', () => {
  test('embedded defaults: Docker Hub, ./data, :5000, 60 s tag freshness', () => {
    const c = loadConfig({ env: {} })
    expect(c.upstream.url).toBe('https://registry-1.docker.io')
    expect(c.data_dir).toBe('./data')
    expect(c.listen).toEqual({ host: '0.0.0.0', port: 5000 })
    expect(c.cache.tag_freshness).toBe(60_000)
    expect(c.upstream.password).toBeNull()
    expect(Object.isFrozen(c.upstream)).toBe(true)
  })

  test('the shipped conf/pullcache.json holds every key at its default', async () => {
    const shipped = loadConfig({ file: join(import.meta.dirname, '../../conf/pullcache.json'), env: {} })
    expect(shipped).toEqual(loadConfig({ env: {} }))
  })

  test('file < environment < flags', async () => {
    const path = await file({
      listen: '127.0.0.1:6000',
      data_dir: '/from/file',
      cache: { tag_freshness: '5m' },
    })
    const c = loadConfig({
      file: path,
      env: { PULLCACHE_DATA_DIR: '/from/env', PULLCACHE_UPSTREAM: 'http://127.0.0.1:9999' },
      flags: { data_dir: '/from/flag' },
    })
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 6000 })
    expect(c.data_dir).toBe('/from/flag')
    expect(c.upstream.url).toBe('http://127.0.0.1:9999')
    expect(c.cache.tag_freshness).toBe(300_000)
  })

  test('every problem is reported at once, with its path; unknown keys are rejected', async () => {
    const path = await file({
      listen: 'nowhere',
      bogus: 1,
      upstream: { url: 'ftp://x', connect_timeout: 'soon', password: 'secret-in-file' },
      cache: { manifest_memory: 'lots' },
    })
    const found = problems(() => loadConfig({ file: path, env: {} }))
    const text = found.join('\n')
    expect(text).toContain('listen')
    expect(text).toContain('bogus')
    expect(text).toContain('upstream.url')
    expect(text).toContain('upstream.connect_timeout')
    expect(text).toContain('upstream')
    expect(text).toContain('password')
    expect(text).toContain('cache.manifest_memory')
    expect(found.length).toBeGreaterThanOrEqual(6)
  })

  test('a broken JSON file is a clear problem, not a crash', async () => {
    const path = await file('{ "listen": ')
    expect(problems(() => loadConfig({ file: path, env: {} }))[0]).toContain(path)
  })

  test('credentials never come from the URL and the password is left out of the file form', () => {
    expect(
      problems(() => loadConfig({ env: { PULLCACHE_UPSTREAM: 'https://u:p@registry.example' } }))[0],
    ).toContain('credentials')
    const c = loadConfig({
      env: { PULLCACHE_UPSTREAM_USERNAME: 'me', PULLCACHE_UPSTREAM_PASSWORD: 'hunter2' },
    })
    expect(c.upstream.password).toBe('hunter2')
    expect(JSON.stringify(fileForm(c))).not.toContain('hunter2')
  })

  test('a password without a username is refused', () => {
    expect(problems(() => loadConfig({ env: { PULLCACHE_UPSTREAM_PASSWORD: 'x' } }))[0]).toContain('username')
  })

  test('cluster: peers from the environment, and a node with peers needs its URL and the secret', () => {
    const env = {
      PULLCACHE_NODE_URL: 'http://10.0.0.5:5000/',
      PULLCACHE_PEERS: 'http://10.0.0.5:5000, http://10.0.0.6:5000',
      PULLCACHE_CLUSTER_SECRET: 's3cret',
    }
    const config = loadConfig({ env })
    expect(config.cluster).toEqual({
      node_url: 'http://10.0.0.5:5000',
      peers: ['http://10.0.0.5:5000', 'http://10.0.0.6:5000'],
      peers_dns: null,
      peers_from_bucket: false,
      secret_file: null,
      secret: 's3cret',
    })
    expect(JSON.stringify(fileForm(config))).not.toContain('s3cret')
    expect(loadConfig({ env: {} }).cluster).toMatchObject({ node_url: null, peers: [], secret: null })
    const { PULLCACHE_CLUSTER_SECRET: _, ...noSecret } = env
    expect(problems(() => loadConfig({ env: noSecret }))[0]).toContain('cluster.secret_file')
    expect(problems(() => loadConfig({ env: { ...env, PULLCACHE_NODE_URL: '' } }))[0]).toContain(
      'cluster.node_url',
    )
    expect(
      problems(() => loadConfig({ env: { ...env, PULLCACHE_PEERS: 'http://10.0.0.6:5000/v2/' } }))[0],
    ).toMatch(/^cluster\.peers\.0: a cluster node URL must be a root/)
  })

  test('cluster: members from a DNS name or the bucket, each needing the URL and the secret, the bucket S3 storage', () => {
    const node = { PULLCACHE_NODE_URL: 'http://10.0.0.5:5000', PULLCACHE_CLUSTER_SECRET: 's3cret' }
    const dns = loadConfig({ env: { ...node, PULLCACHE_PEERS_DNS: 'http://pullcache.mirrors.svc:5000/' } })
    expect(dns.cluster).toMatchObject({ peers: [], peers_dns: 'http://pullcache.mirrors.svc:5000' })
    expect(
      problems(() => loadConfig({ env: { ...node, PULLCACHE_PEERS_DNS: 'pullcache.mirrors.svc' } }))[0],
    ).toMatch(/^cluster\.peers_dns: /)
    expect(
      problems(() => loadConfig({ env: { PULLCACHE_PEERS_DNS: 'http://pullcache:5000' } }))[0],
    ).toContain('cluster.node_url')
    const s3 = {
      PULLCACHE_STORAGE: 's3',
      PULLCACHE_S3_BUCKET: 'pullcache',
      AWS_ACCESS_KEY_ID: 'id',
      AWS_SECRET_ACCESS_KEY: 'key',
    }
    const bucket = loadConfig({ env: { ...node, ...s3, PULLCACHE_PEERS_FROM_BUCKET: '1' } })
    expect(bucket.cluster).toMatchObject({ peers: [], peers_dns: null, peers_from_bucket: true })
    expect(
      problems(() => loadConfig({ env: { ...node, PULLCACHE_PEERS_FROM_BUCKET: 'true' } }))[0],
    ).toContain('S3 storage')
    expect(problems(() => loadConfig({ env: { ...s3, PULLCACHE_PEERS_FROM_BUCKET: 'yes' } }))[0]).toContain(
      'cluster.node_url',
    )
  })

  test('durations and sizes', () => {
    expect(parseDuration('500ms')).toBe(500)
    expect(parseDuration('1.5h')).toBe(5_400_000)
    expect(parseDuration('7d')).toBe(604_800_000)
    expect(parseDuration('10')).toBeUndefined()
    expect(parseSize('64MiB')).toBe(64 * 2 ** 20)
    expect(parseSize('50GiB')).toBe(50 * 2 ** 30)
    expect(parseSize('1.5GB')).toBe(1.5e9)
    expect(parseSize('1024')).toBe(1024)
    expect(parseSize('many')).toBeUndefined()
  })

  // Each key where 0 is a mistake, with what 0 would have done.
  const ZERO_REFUSED: [string, string, string][] = [
    ['upstream.connect_timeout', '0s', 'turn the timeout off'],
    ['upstream.header_timeout', '0ms', 'turn the timeout off'],
    ['upstream.idle_timeout', '0m', 'turn the timeout off'],
    ['cache.revalidate_timeout', '0s', 'serve every cached tag stale'],
    ['cache.eviction_interval', '0s', 'run eviction in a busy loop'],
    ['index.flush_interval', '0.1ms', 'flush in a busy loop'],
    ['cache.max_size', '0GiB', 'evict everything'],
    ['cache.max_unused_age', '0d', 'evict everything'],
  ]

  test.each(ZERO_REFUSED)('%s of %s is refused: 0 would %s', (key, zero, would) => {
    const found = problems(() => loadConfig({ env: {}, flags: { [key]: zero } }))
    expect(found).toHaveLength(1)
    expect(found[0]).toContain(`${key}: must be more than zero (0 would `)
    expect(found[0]).toContain(would)
    expect(found[0]).toContain(JSON.stringify(zero))
  })

  test('every zero is reported at once, the environment included', () => {
    const flags = Object.fromEntries(
      ZERO_REFUSED.filter(([key]) => key !== 'cache.max_size').map(([k]) => [k, '0s']),
    )
    const found = problems(() => loadConfig({ env: { PULLCACHE_MAX_SIZE: '0' }, flags }))
    expect(found.map((p) => p.split(':')[0]).sort()).toEqual(ZERO_REFUSED.map(([key]) => key).sort())
  })

  test('zero stays a choice where it means one: no grace, always revalidate, no manifests in memory', () => {
    const c = loadConfig({
      env: {},
      flags: { shutdown_grace: '0s', 'cache.tag_freshness': '0s', 'cache.manifest_memory': '0' },
    })
    expect(c.shutdown_grace).toBe(0)
    expect(c.cache.tag_freshness).toBe(0)
    expect(c.cache.manifest_memory).toBe(0)
  })

  test('a delay longer than a timer can wait is refused instead of firing after 1 ms', () => {
    const found = problems(() =>
      loadConfig({ env: {}, flags: { 'cache.eviction_interval': '30d', shutdown_grace: '25d' } }),
    )
    expect(found).toEqual([
      'shutdown_grace: must be at most 24d: a longer delay is more than a timer can wait',
      'cache.eviction_interval: must be at most 24d: a longer delay is more than a timer can wait',
    ])
    // Text that is no duration at all gets that one problem, not a second about its length.
    expect(problems(() => loadConfig({ env: {}, flags: { 'upstream.connect_timeout': 'soon' } }))).toEqual([
      'upstream.connect_timeout: not a duration like "60s", "5m" or "500ms": "soon"',
    ])
    expect(loadConfig({ env: {}, flags: { 'cache.eviction_interval': '24d' } }).cache.eviction_interval).toBe(
      24 * 86_400_000,
    )
  })

  test('cache policy keys are checked: budgets, water marks, patterns', async () => {
    const path = await file({
      cache: {
        max_size: '0',
        high_water: 0.5,
        low_water: 0.9,
        pins: ['/[/'],
        tag_freshness_rules: [{ match: 'x' }],
      },
    })
    const text = problems(() => loadConfig({ file: path, env: {} })).join('\n')
    expect(text).toContain('cache.max_size')
    expect(text).toContain('low_water must be below high_water')
    expect(text).toContain('cache.pins.0')
    expect(text).toContain('cache.tag_freshness_rules.0.freshness')
    const ok = loadConfig({
      file: await file({
        cache: { max_size: '50GiB', pins: ['library/postgres:16*'], max_unused_age: '30d' },
      }),
      env: {},
    })
    expect(ok.cache.max_size).toBe(50 * 2 ** 30)
    expect(ok.cache.max_unused_age).toBe(30 * 86_400_000)
    expect(fileForm(ok)).toMatchObject({ cache: { pins: ['library/postgres:16*'] } })
  })

  test('accounting retention: 30 days by default, from the environment, and never under an hour', () => {
    expect(loadConfig({ env: {} }).index.accounting_retention).toBe(30 * 86_400_000)
    expect(loadConfig({ env: { PULLCACHE_ACCOUNTING_RETENTION: '90d' } }).index.accounting_retention).toBe(
      90 * 86_400_000,
    )
    for (const bad of ['0s', '30m', 'forever']) {
      const text = problems(() => loadConfig({ env: { PULLCACHE_ACCOUNTING_RETENTION: bad } })).join('\n')
      expect(text).toContain('index.accounting_retention')
    }
  })

  test('tag patterns: tag globs, repo:tag globs, regular expressions', () => {
    const t = (p: string, repo: string, tag: string) => compileTagPattern(p)!(repo, tag)
    expect(t('latest', 'library/a', 'latest')).toBe(true)
    expect(t('latest', 'library/a', 'latest2')).toBe(false)
    expect(t('v*', 'x', 'v1.2')).toBe(true)
    expect(t('library/*:*', 'library/alpine', '3.20')).toBe(true)
    expect(t('library/*:*', 'bitnami/redis', '7')).toBe(false)
    expect(t('**:latest', 'a/b/c', 'latest')).toBe(true)
    expect(t('/^v?\\d+\\.\\d+\\.\\d+$/', 'x', 'v1.2.3')).toBe(true)
    expect(t('/^v?\\d+\\.\\d+\\.\\d+$/', 'x', 'latest')).toBe(false)
    expect(compileTagPattern('/[/')).toBeUndefined()
  })

  test('limits: defaults, environment, and no zero that would mean "never"', () => {
    expect(loadConfig({ env: {} }).limits).toEqual({
      header_timeout: 20_000,
      send_timeout: 60_000,
      keepalive_timeout: 65_000,
      max_connections: 1024,
    })
    const c = loadConfig({
      env: {
        PULLCACHE_HEADER_TIMEOUT: '2s',
        PULLCACHE_SEND_TIMEOUT: '500ms',
        PULLCACHE_KEEPALIVE_TIMEOUT: '5s',
        PULLCACHE_MAX_CONNECTIONS: '10',
      },
    })
    expect(c.limits).toEqual({
      header_timeout: 2000,
      send_timeout: 500,
      keepalive_timeout: 5000,
      max_connections: 10,
    })
    const found = problems(() =>
      loadConfig({
        env: {
          PULLCACHE_HEADER_TIMEOUT: '0s',
          PULLCACHE_SEND_TIMEOUT: '0',
          PULLCACHE_KEEPALIVE_TIMEOUT: 'never',
          PULLCACHE_MAX_CONNECTIONS: '0',
        },
      }),
    )
    for (const key of ['header_timeout', 'send_timeout', 'keepalive_timeout', 'max_connections'])
      expect(
        found.some((p) => p.startsWith(`limits.${key}:`)),
        key,
      ).toBe(true)
  })
})

describe('storage', () => {
  const s3Env = {
    PULLCACHE_STORAGE: 's3',
    PULLCACHE_S3_ENDPOINT: 'http://127.0.0.1:6280/',
    PULLCACHE_S3_BUCKET: 'pullcache-blobs',
    PULLCACHE_S3_PREFIX: 'site-a/',
    PULLCACHE_S3_REGION: 'eu-west-1',
    PULLCACHE_S3_FORCE_PATH_STYLE: '1',
  }

  test('local by default, with no credentials looked for', () => {
    const c = loadConfig({ env: { AWS_ACCESS_KEY_ID: 'only-one' } })
    expect(c.storage.type).toBe('local')
    expect(c.storage.credentials).toBeNull()
  })

  test('S3 from the environment, keys from the standard AWS variables, never in the file form', () => {
    const c = loadConfig({ env: { ...s3Env, AWS_ACCESS_KEY_ID: 'AKID', AWS_SECRET_ACCESS_KEY: 'sekrit' } })
    expect(c.storage).toMatchObject({
      type: 's3',
      s3: {
        endpoint: 'http://127.0.0.1:6280',
        bucket: 'pullcache-blobs',
        prefix: 'site-a/',
        region: 'eu-west-1',
        force_path_style: true,
      },
      credentials: { accessKeyId: 'AKID', secretAccessKey: 'sekrit' },
    })
    const printed = JSON.stringify(fileForm(c))
    expect(printed).not.toContain('AKID')
    expect(printed).not.toContain('sekrit')
  })

  test('keys from files (systemd credentials), trailing newline dropped', async () => {
    const dir = await tmpRoot('pullcache-conf')
    await writeFile(join(dir, 'id'), 'AKID-FILE\n')
    await writeFile(join(dir, 'secret'), 'sekrit-file\n')
    const c = loadConfig({
      env: {
        ...s3Env,
        PULLCACHE_S3_ACCESS_KEY_ID_FILE: join(dir, 'id'),
        PULLCACHE_S3_SECRET_ACCESS_KEY_FILE: join(dir, 'secret'),
      },
    })
    expect(c.storage.credentials).toEqual({ accessKeyId: 'AKID-FILE', secretAccessKey: 'sekrit-file' })
  })

  test('what cannot work is refused at once: no bucket, half a key pair, a key in the URL', () => {
    expect(problems(() => loadConfig({ env: { PULLCACHE_STORAGE: 's3' } }))).toEqual([
      'storage.s3.bucket: S3 storage needs a bucket (storage.s3.bucket or PULLCACHE_S3_BUCKET)',
    ])
    expect(problems(() => loadConfig({ env: { ...s3Env, AWS_ACCESS_KEY_ID: 'AKID' } }))).toEqual([
      'storage.s3: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither',
    ])
    const found = problems(() =>
      loadConfig({
        env: {
          ...s3Env,
          PULLCACHE_S3_ENDPOINT: 'http://AKID:sekrit@127.0.0.1:6280',
          PULLCACHE_S3_PREFIX: '/x',
        },
      }),
    )
    expect(found).toHaveLength(2)
    expect(found.join('\n')).not.toContain('sekrit')
    expect(problems(() => loadConfig({ env: { ...s3Env, PULLCACHE_STORAGE: 'nfs' } }))[0]).toMatch(
      /^storage\.type:/,
    )
  })

  test('redirects: off by default, on from the environment with a ttl and a public endpoint', () => {
    expect(loadConfig({ env: s3Env }).storage.s3.redirect).toEqual({
      enabled: false,
      ttl: 300_000,
      public_endpoint: null,
    })
    const c = loadConfig({
      env: {
        ...s3Env,
        PULLCACHE_S3_REDIRECT: '1',
        PULLCACHE_S3_REDIRECT_TTL: '90s',
        PULLCACHE_S3_PUBLIC_ENDPOINT: 'https://blobs.example.com/',
      },
    })
    expect(c.storage.s3.redirect).toEqual({
      enabled: true,
      ttl: 90_000,
      public_endpoint: 'https://blobs.example.com',
    })
  })

  test("redirects: a ttl past 1h or past the bucket's grace, local storage, or a bucket under the node's own host are refused", async () => {
    expect(problems(() => loadConfig({ env: { ...s3Env, PULLCACHE_S3_REDIRECT_TTL: '2h' } }))).toEqual([
      'storage.s3.redirect.ttl: must be from 1s to 1h',
    ])
    expect(problems(() => loadConfig({ env: { PULLCACHE_S3_REDIRECT: 'on' } }))).toEqual([
      'storage.s3.redirect.enabled: redirects go to the bucket: they need storage.type s3',
    ])
    // With a bucket budget, a URL handed out must not outlive the evictor's grace.
    const budget = {
      ...s3Env,
      PULLCACHE_S3_REDIRECT: '1',
      PULLCACHE_S3_MAX_SIZE: '10GiB',
      PULLCACHE_S3_REDIRECT_TTL: '30m',
    }
    const shortGrace = await file({ storage: { s3: { grace: '10m' } } })
    expect(problems(() => loadConfig({ env: budget, file: shortGrace }))).toEqual([
      'storage.s3.grace: must be at least redirect.ttl, or a blob could go while a presigned URL to it works',
    ])
    expect(loadConfig({ env: { ...budget, PULLCACHE_S3_REDIRECT_TTL: '10m' } }).storage.s3.grace).toBe(
      3_600_000,
    )
    // Clients keep their credentials on a redirect to the same host or a subdomain (moby#50065).
    const leaks = (publicEndpoint: string | undefined, nodeUrl: string) => {
      const load = () =>
        loadConfig({
          env: {
            ...s3Env,
            PULLCACHE_S3_REDIRECT: '1',
            ...(publicEndpoint === undefined ? {} : { PULLCACHE_S3_PUBLIC_ENDPOINT: publicEndpoint }),
            PULLCACHE_NODE_URL: nodeUrl,
          },
        })
      try {
        load()
        return []
      } catch {
        return problems(load)
      }
    }
    expect(leaks('https://blobs.mirror.example.com', 'https://mirror.example.com')[0]).toMatch(
      /^storage\.s3\.redirect\.public_endpoint: clients would be sent to blobs\.mirror\.example\.com/,
    )
    expect(leaks('https://MIRROR.example.com:9000', 'https://mirror.example.com')).toHaveLength(1)
    expect(leaks(undefined, 'http://127.0.0.1:5000')[0]).toMatch(/^storage\.s3\.endpoint: /)
    expect(leaks('https://blobs.example.com', 'https://mirror.example.com')).toEqual([])
    expect(leaks('https://example.com', 'https://mirror.example.com')).toEqual([])
  })
})

describe('redirect scope', () => {
  test("Go's rule: the same host or a subdomain keeps the credentials, ports aside", () => {
    expect(sameOrSubdomain('mirror.example.com', 'mirror.example.com')).toBe(true)
    expect(sameOrSubdomain('s3.mirror.example.com', 'mirror.example.com')).toBe(true)
    expect(sameOrSubdomain('notmirror.example.com', 'mirror.example.com')).toBe(false)
    expect(sameOrSubdomain('example.com', 'mirror.example.com')).toBe(false)
    expect(sameOrSubdomain('[::1]', '::1')).toBe(true)
    expect(sameOrSubdomain('::1', '1')).toBe(false)
    expect(hostOfHeader('127.0.0.1:5000')).toBe('127.0.0.1')
    expect(hostOfHeader('[::1]:5000')).toBe('[::1]')
    expect(hostOfHeader(undefined)).toBeUndefined()
  })
})
