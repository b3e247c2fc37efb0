// The upstreams list: several registries on one port, each named by the host clients use for it.

import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { fileForm, loadConfig } from '../../src/config.js'
import { problems } from '../support/config-problems.js'
import { tmpRoot } from '../support/tmp.js'

async function file(content: unknown): Promise<string> {
  const dir = await tmpRoot('pullcache-conf')
  const path = join(dir, 'pullcache.json')
  await writeFile(path, JSON.stringify(content))
  return path
}

describe('upstreams', () => {
  test('defaults: the root is docker.io and there are no others', () => {
    const c = loadConfig({ env: {} })
    expect(c.upstream.host).toBe('docker.io')
    expect(c.upstreams).toEqual([])
  })

  test('an entry takes the root upstream keys, with library_prefix off and its own freshness', async () => {
    const dir = await tmpRoot('pullcache-secret')
    const secret = join(dir, 'ghcr')
    await writeFile(secret, 'ghp-token\n')
    const c = loadConfig({
      file: await file({
        upstreams: [
          {
            host: 'ghcr.io',
            url: 'https://ghcr.io',
            username: 'bot',
            password_file: secret,
            tag_freshness: '5m',
          },
          { host: 'registry.example.com:5443', url: 'https://registry.example.com:5443' },
        ],
      }),
      env: {},
    })
    expect(c.upstreams[0]).toMatchObject({
      host: 'ghcr.io',
      url: 'https://ghcr.io',
      username: 'bot',
      password: 'ghp-token',
      library_prefix: false,
      tag_freshness: 300_000,
      connect_timeout: 10_000,
      max_concurrent_fetches: 16,
    })
    expect(c.upstreams[1]!.tag_freshness).toBeUndefined()
    expect(c.upstreams[1]!.password).toBeNull()
    expect(JSON.stringify(fileForm(c))).not.toContain('ghp-token')
  })

  test('a host must be a lowercase registry host, not a URL, path or bare word', async () => {
    const bad = ['https://ghcr.io', 'GHCR.io', 'ghcr.io/org', 'myorg', 'ghcr..io', '']
    const path = await file({ upstreams: bad.map((host) => ({ host, url: 'https://ghcr.io' })) })
    const found = problems(() => loadConfig({ file: path, env: {} }))
    for (const [i] of bad.entries())
      expect(found.some((p) => p.startsWith(`upstreams.${i}.host:`))).toBe(true)
    expect(problems(() => loadConfig({ env: { PULLCACHE_UPSTREAM_HOST: 'hub' } }))[0]).toMatch(
      /^upstream\.host: a registry host needs/,
    )
  })

  test('hosts are unique, the root host included; other problems are reported with them', async () => {
    const path = await file({
      upstream: { host: 'docker.io' },
      upstreams: [
        { host: 'ghcr.io', url: 'https://ghcr.io' },
        { host: 'docker.io', url: 'https://mirror.gcr.io' },
        { host: 'ghcr.io', url: 'https://ghcr.io' },
      ],
      cache: { tag_freshness: 'soon' },
    })
    const found = problems(() => loadConfig({ file: path, env: {} }))
    expect(found).toEqual([
      'cache.tag_freshness: not a duration like "60s", "5m" or "500ms": "soon"',
      'upstreams.1.host: docker.io is already the host of another upstream',
      'upstreams.2.host: ghcr.io is already the host of another upstream',
    ])
  })

  test('an entry needs a url, takes no unknown keys, and a password file needs a username', async () => {
    const path = await file({ upstreams: [{ host: 'quay.io', token: 'x' }] })
    const found = problems(() => loadConfig({ file: path, env: {} }))
    expect(found.some((p) => p.startsWith('upstreams.0.url:'))).toBe(true)
    expect(found.some((p) => p.includes('token'))).toBe(true)
    const dir = await tmpRoot('pullcache-secret')
    await writeFile(join(dir, 'pw'), 'x')
    const source = {
      upstreams: [{ host: 'quay.io', url: 'https://quay.io', password_file: join(dir, 'pw') }],
    }
    const withPassword = await file(source)
    expect(problems(() => loadConfig({ file: withPassword, env: {} }))).toEqual([
      'upstreams.0.username: a password is set but no username',
    ])
  })
})
