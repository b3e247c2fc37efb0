import { rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { type Config, loadConfig } from '../../src/config.js'
import { runCli } from '../support/run-cli.js'
import { tmpRoot } from '../support/tmp.js'

/** A config as plain data: tag patterns compare by their text, not by their compiled function. */
function plain(config: Config): unknown {
  return JSON.parse(JSON.stringify(config))
}

describe('pullcache config check', () => {
  test('a bad file: every problem with its path, exit 2', async () => {
    const file = join(await tmpRoot(), 'bad.json')
    await writeFile(
      file,
      JSON.stringify({
        listen: 'nowhere',
        upstream: { url: 'ftp://example.com', surprise: true },
        cache: { tag_freshness: 'soon' },
        log: { level: 'chatty' },
      }),
    )
    const r = await runCli(['config', 'check', '--config', file])
    expect(r.code).toBe(2)
    expect(r.stdout).toBe('')
    for (const path of [
      'listen:',
      'upstream.url:',
      'upstream: Unrecognized key: "surprise"',
      'cache.tag_freshness:',
      'log.level:',
    ]) {
      expect(r.stderr).toContain(path)
    }
    expect(r.stderr).toContain('5 problems')
  })

  test('upstreams: a bad or repeated host is a problem; a good list prints back as written', async () => {
    const dir = await tmpRoot()
    const bad = join(dir, 'bad-upstreams.json')
    await writeFile(
      bad,
      JSON.stringify({
        upstreams: [
          { host: 'https://ghcr.io', url: 'https://ghcr.io' },
          { host: 'docker.io', url: 'https://mirror.gcr.io' },
        ],
      }),
    )
    const refused = await runCli(['config', 'check', '--config', bad])
    expect(refused.code).toBe(2)
    expect(refused.stderr).toContain('upstreams.0.host: not a registry host')
    expect(refused.stderr).toContain('upstreams.1.host: docker.io is already the host of another upstream')
    const good = join(dir, 'upstreams.json')
    const upstreams = [{ host: 'quay.io', url: 'https://quay.io', tag_freshness: '5m' }]
    await writeFile(good, JSON.stringify({ upstream: { host: 'docker.io' }, upstreams }))
    const r = await runCli(['config', 'check', '--config', good])
    expect(r.code).toBe(0)
    const printed = JSON.parse(r.stdout)
    expect(printed.upstream.host).toBe('docker.io')
    expect(printed.upstreams).toEqual([
      {
        ...upstreams[0],
        username: null,
        password_file: null,
        connect_timeout: '10s',
        header_timeout: '30s',
        idle_timeout: '30s',
        max_concurrent_fetches: 16,
        connections: 32,
        rate_limit_reserve: 10,
        library_prefix: false,
      },
    ])
  })

  test('a file that is not JSON, or is missing, is a problem too', async () => {
    const file = join(await tmpRoot(), 'broken.json')
    await writeFile(file, '{ "listen": ')
    const broken = await runCli(['config', 'check', '--config', file])
    expect(broken.code).toBe(2)
    expect(broken.stderr).toContain(file)
    const missing = await runCli(['config', 'check', '--config', join(await tmpRoot(), 'nope.json')])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toContain('nope.json')
  })

  test('a good file with the environment applied: the effective config as a file, no password', async () => {
    const dir = await tmpRoot()
    try {
      const file = join(dir, 'ok.json')
      await writeFile(file, JSON.stringify({ listen: '127.0.0.1:5099', cache: { tag_freshness: '2m' } }))
      const r = await runCli(['config', 'check', '--config', file], {
        env: {
          PULLCACHE_TAG_FRESHNESS: '5m',
          PULLCACHE_DATA_DIR: join(dir, 'data'),
          PULLCACHE_UPSTREAM_USERNAME: 'mirror-bot',
          PULLCACHE_UPSTREAM_PASSWORD: 'hunter2-very-secret',
        },
      })
      expect(r.code).toBe(0)
      expect(r.stdout).not.toContain('hunter2')
      expect(r.stderr).not.toContain('hunter2')
      // Where the password comes from, since the printed file does not hold it.
      expect(r.stderr).toContain('PULLCACHE_UPSTREAM_PASSWORD')
      const config = JSON.parse(r.stdout)
      // The shape the file has: the text forms the loader reads.
      expect(config.listen).toBe('127.0.0.1:5099')
      // The environment overrides the file, as for serve.
      expect(config.cache.tag_freshness).toBe('5m')
      expect(config.data_dir).toBe(join(dir, 'data'))
      expect(config.upstream.username).toBe('mirror-bot')
      expect(config.upstream).not.toHaveProperty('password')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  test("a notification endpoint's headers are not printed, and credentials in its URL are refused", async () => {
    const dir = await tmpRoot()
    try {
      const file = join(dir, 'hooks.json')
      const endpoint = {
        name: 'audit',
        url: 'https://hooks.example/in',
        headers: { Authorization: 'Bearer tok-9b1e' },
      }
      await writeFile(file, JSON.stringify({ notifications: { endpoints: [endpoint] } }))
      const r = await runCli(['config', 'check', '--config', file])
      expect(r.code).toBe(0)
      expect(r.stdout + r.stderr).not.toContain('tok-9b1e')
      expect(r.stderr).toContain('notification endpoints audit')
      expect(JSON.parse(r.stdout).notifications.endpoints[0]).toMatchObject({
        name: 'audit',
        url: endpoint.url,
      })
      const bad = await runCli(['config', 'check'], {
        env: { PULLCACHE_NOTIFY_URL: 'https://me:pw@hooks.example/' },
      })
      expect(bad.code).toBe(2)
      expect(bad.stderr).toContain("notifications.endpoints.0.url: put credentials in the endpoint's headers")
      expect(bad.stderr).not.toContain('pw@')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  test("the bucket's keys are not printed, and the note says where they come from", async () => {
    const r = await runCli(['config', 'check'], {
      env: {
        PULLCACHE_STORAGE: 's3',
        PULLCACHE_S3_BUCKET: 'pullcache-blobs',
        PULLCACHE_S3_ENDPOINT: 'http://127.0.0.1:6280',
        AWS_ACCESS_KEY_ID: 'AKID-7f3a',
        AWS_SECRET_ACCESS_KEY: 'secret-51c9',
      },
    })
    expect(r.code).toBe(0)
    expect(r.stdout + r.stderr).not.toMatch(/AKID-7f3a|secret-51c9/)
    expect(r.stderr).toContain("the bucket's keys are not printed; they come from AWS_ACCESS_KEY_ID")
    expect(JSON.parse(r.stdout).storage).toMatchObject({
      type: 's3',
      s3: { bucket: 'pullcache-blobs', endpoint: 'http://127.0.0.1:6280' },
    })
  })

  test('what it prints is a file --config loads back to the same configuration', async () => {
    const dir = await tmpRoot()
    try {
      const passwordFile = join(dir, 'upstream-password')
      await writeFile(passwordFile, 'hunter2-very-secret\n')
      const file = join(dir, 'in.json')
      await writeFile(
        file,
        JSON.stringify({
          listen: '[::1]:5099',
          upstream: { username: 'mirror-bot', password_file: passwordFile, connect_timeout: '1500ms' },
          cache: {
            max_size: '50GiB',
            pins: ['library/nginx:1.27'],
            tag_freshness_rules: [{ match: '*:latest', freshness: '5m' }],
          },
        }),
      )
      const env = { PULLCACHE_OFFLINE: 'yes', PULLCACHE_MAX_SIZE: '20GB' }
      const first = await runCli(['config', 'check', '--config', file, '--data-dir', join(dir, 'data')], {
        env,
      })
      expect(first.code).toBe(0)
      expect(first.stdout + first.stderr).not.toContain('hunter2')
      const printed = join(dir, 'printed.json')
      await writeFile(printed, first.stdout)
      // Loaded with nothing else applied: the file alone carries the whole configuration.
      const again = await runCli(['config', 'check', '--config', printed])
      expect(again.code).toBe(0)
      expect(again.stdout).toBe(first.stdout)
      expect(plain(loadConfig({ file: printed, env: {} }))).toEqual(
        plain(loadConfig({ file, env, flags: { data_dir: join(dir, 'data') } })),
      )
      expect(JSON.parse(first.stdout)).toMatchObject({ offline: true, cache: { max_size: '20GB' } })
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  test('PULLCACHE_CONFIG names the file when --config does not; flags win over both', async () => {
    const file = join(await tmpRoot(), 'env.json')
    await writeFile(file, JSON.stringify({ data_dir: '/srv/from-file' }))
    const r = await runCli(['config', 'check', '--upstream', 'http://127.0.0.1:1'], {
      env: { PULLCACHE_CONFIG: file },
    })
    expect(r.code).toBe(0)
    const config = JSON.parse(r.stdout)
    expect(config.data_dir).toBe('/srv/from-file')
    expect(config.upstream.url).toBe('http://127.0.0.1:1')
  })

  test('usage: --help, a missing or unknown subcommand', async () => {
    const help = await runCli(['config', 'check', '--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('Usage: pullcache config check')
    expect((await runCli(['config'])).code).toBe(2)
    expect((await runCli(['config', 'lint'])).code).toBe(2)
    expect((await runCli(['config', 'check', '--nope'])).code).toBe(2)
  })
})
