import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { runCli } from '../support/run-cli.js'
import { tmpRoot } from '../support/tmp.js'

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

  test('a good file with the environment applied: the effective config, password masked', async () => {
    const dir = await tmpRoot()
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
    expect(r.stderr).toBe('')
    const config = JSON.parse(r.stdout)
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 5099 })
    // The environment overrides the file, as for serve.
    expect(config.cache.tag_freshness).toBe(300_000)
    expect(config.data_dir).toBe(join(dir, 'data'))
    expect(config.upstream.username).toBe('mirror-bot')
    expect(config.upstream.password).toBe('********')
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
