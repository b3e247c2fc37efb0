import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { loadConfig } from '../../src/config.js'
import { Access, parseHtpasswd } from '../../src/http/access.js'
import { silentLogger } from '../../src/log.js'
import { jwtGrantsPull } from '../../src/upstream/auth.js'
import { problems } from '../support/config-problems.js'
import { tmpRoot } from '../support/tmp.js'

// `htpasswd -nbB alice secret` (cost 5), and `htpasswd -nbm carol x` (MD5).
const ALICE = 'alice:$2y$05$J/p89Q9a3mAkOLMv3U7/T.HR25xC9CtY2QrJAzEvJU.xGbT3P5VX.'
const CAROL = 'carol:$apr1$Xh1uV6Qw$0HcO7VqS1t5c1J0m2cQmQ/'

describe('htpasswd', () => {
  test('bcrypt entries are accounts; comments and blank lines are skipped', () => {
    const { accounts, problems } = parseHtpasswd(`# CI runners\n\n${ALICE}\r\n`)
    expect(problems).toEqual([])
    expect([...accounts.keys()]).toEqual(['alice'])
  })

  test('every other line is a problem, with its line and what it is', () => {
    const { problems } = parseHtpasswd(`${ALICE}\n${CAROL}\nbob:{SHA}abc=\nnocolon\n${ALICE}\n`)
    expect(problems).toEqual([
      'line 2: user "carol" has a MD5 ($apr1$) hash; only bcrypt is accepted (htpasswd -B)',
      'line 3: user "bob" has a SHA-1 ({SHA}) hash; only bcrypt is accepted (htpasswd -B)',
      'line 4: not "user:hash"',
      'line 5: user "alice" is listed twice',
    ])
  })
})

describe('admin.allow', () => {
  test('addresses and networks, IPv4-mapped IPv6 included; none listed lets everyone in', () => {
    const config = loadConfig({ env: { PULLCACHE_ADMIN_ALLOW: '10.0.0.0/8, 192.168.1.7,fd00::/8' } })
    expect(config.admin.allow).toEqual(['10.0.0.0/8', '192.168.1.7', 'fd00::/8'])
    const access = new Access({ config, log: silentLogger })
    expect(access.adminAllowed('10.2.3.4')).toBe(true)
    expect(access.adminAllowed('::ffff:10.2.3.4')).toBe(true)
    expect(access.adminAllowed('192.168.1.7')).toBe(true)
    expect(access.adminAllowed('192.168.1.8')).toBe(false)
    expect(access.adminAllowed('fd12::1')).toBe(true)
    expect(access.adminAllowed('127.0.0.1')).toBe(false)
    expect(new Access({ config: loadConfig({ env: {} }), log: silentLogger }).adminAllowed('1.2.3.4')).toBe(
      true,
    )
  })

  test('a network that is not one is a config problem', () => {
    expect(problems(() => loadConfig({ env: { PULLCACHE_ADMIN_ALLOW: '10.0.0.0/33,example.com' } }))).toEqual(
      [
        'admin.allow.0: not an address or CIDR network like "10.0.0.0/8": 10.0.0.0/33',
        'admin.allow.1: not an address or CIDR network like "10.0.0.0/8": example.com',
      ],
    )
  })

  test('anonymous access off needs accounts (or client certificates)', () => {
    expect(problems(() => loadConfig({ env: { PULLCACHE_AUTH_ANONYMOUS: 'false' } }))).toEqual([
      'auth.anonymous: turning anonymous access off needs accounts in auth.htpasswd or client certificates (tls.client_ca)',
    ])
  })
})

describe('what an anonymous token grants', () => {
  const jwt = (claims: unknown) =>
    ['{"alg":"RS256"}', JSON.stringify(claims), 'sig']
      .map((p) => Buffer.from(p).toString('base64url'))
      .join('.')

  test("Docker Hub's access claim", () => {
    const granted = jwt({ access: [{ type: 'repository', name: 'library/alpine', actions: ['pull'] }] })
    expect(jwtGrantsPull(granted, 'library/alpine')).toBe(true)
    expect(jwtGrantsPull(granted, 'library/busybox')).toBe(false)
    const nothing = jwt({ access: [{ type: 'repository', name: 'acme/secret', actions: [] }] })
    expect(jwtGrantsPull(nothing, 'acme/secret')).toBe(false)
    expect(jwtGrantsPull(jwt({ access: [] }), 'acme/secret')).toBe(false)
  })

  test('an opaque token, or a JWT without the claim, says nothing', () => {
    expect(jwtGrantsPull('fake-abcdef', 'library/alpine')).toBeUndefined()
    expect(jwtGrantsPull('a.b.c', 'library/alpine')).toBeUndefined()
    expect(jwtGrantsPull(jwt({ sub: 'x' }), 'library/alpine')).toBeUndefined()
  })
})

describe('sign-ins across a reload', () => {
  test('a reload while a password is being checked does not refuse an account it kept', async () => {
    const dir = await tmpRoot('access-reload')
    const file = join(dir, 'htpasswd')
    await writeFile(file, `${ALICE}\n`)
    const config = loadConfig({ env: { PULLCACHE_AUTH_HTPASSWD: file } })
    const access = new Access({ config, log: silentLogger })
    const header = `Basic ${Buffer.from('alice:secret').toString('base64')}`
    // The bcrypt comparison runs asynchronously; the reload (same file, as a SIGHUP for some other
    // setting would do) lands while it runs.
    const signingIn = access.identify(header, '192.0.2.1')
    access.reload(config)
    await expect(signingIn).resolves.toEqual({ user: 'alice' })

    // A reload that removes the account while its password is being checked still refuses it
    // (the reload before it forgets the sign-in just remembered).
    access.reload(config)
    await writeFile(file, '# nobody\n')
    const again = access.identify(header, '192.0.2.2')
    access.reload(config)
    await expect(again).rejects.toMatchObject({ code: 'UNAUTHORIZED' })
  })
})
