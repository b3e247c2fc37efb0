// Who may pull what: with an upstream account configured, anonymous clients get exactly what
// anonymous pulls upstream get; clients signed in with an htpasswd account get what the account
// gets. The fake upstream has a private repository that only its user's tokens may pull.

import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import bcrypt from 'bcryptjs'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { loadConfig } from '../../src/config.js'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'

const UPSTREAM_USER = 'puller'
const UPSTREAM_PASSWORD = 'upstream-secret-7d1f'
const SECRET = 'acme/secret'
const ALICE = { user: 'alice', password: 'alice-pass-93c1e' }
const BOB = { user: 'bob', password: 'bob-pass-4471aa' }

const run = promisify(execFile)
let dir: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pullcache-access-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** An htpasswd file written by the real `htpasswd -B` (apache2-utils), as operators make it. */
async function htpasswd(name: string, ...users: { user: string; password: string }[]): Promise<string> {
  const path = join(dir, name)
  await rm(path, { force: true })
  for (const [i, u] of users.entries()) {
    await run('htpasswd', [...(i === 0 ? ['-c'] : []), '-B', '-b', path, u.user, u.password])
  }
  return path
}

function basic(u: { user: string; password: string }): Record<string, string> {
  return { authorization: `Basic ${Buffer.from(`${u.user}:${u.password}`).toString('base64')}` }
}

function errorOf(body: Buffer): { code: string; message: string } {
  return (JSON.parse(body.toString()) as { errors: { code: string; message: string }[] }).errors[0]!
}

/** The environment of a mirror with the upstream account and htpasswd accounts. */
function accountEnv(file: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PULLCACHE_UPSTREAM_USERNAME: UPSTREAM_USER,
    PULLCACHE_UPSTREAM_PASSWORD: UPSTREAM_PASSWORD,
    PULLCACHE_AUTH_HTPASSWD: file,
    ...extra,
  }
}

/** The config a running mirror would read on SIGHUP, with this environment. */
function reloadWith(mirror: TestMirror, upstream: string, env: Record<string, string>) {
  const config = loadConfig({
    env: {
      PULLCACHE_LISTEN: '127.0.0.1:0',
      PULLCACHE_DATA_DIR: mirror.dataDir,
      PULLCACHE_UPSTREAM: upstream,
      ...env,
    },
  })
  return mirror.server.reload(config)
}

describe('with JWT tokens, as Docker Hub hands them out', () => {
  const fx = useFakeUpstream({ users: { [UPSTREAM_USER]: UPSTREAM_PASSWORD }, tokenFormat: 'jwt' })

  test('anonymous: 401 with a Basic challenge for a private repository; signed in: 200; credentials stay here', async () => {
    const { up } = fx
    const secret = up.addImage(SECRET, 'v1')
    up.setPrivate(SECRET)
    up.addImage('library/alpine', '3')
    const file = await htpasswd('one', ALICE)
    const mirror = await fx.mirror({ env: accountEnv(file) })

    for (const path of [
      `/v2/${SECRET}/manifests/v1`,
      `/v2/${SECRET}/manifests/${secret.manifestDigest}`,
      `/v2/${SECRET}/blobs/${secret.layers[0]!.digest}`,
      `/v2/${SECRET}/tags/list`,
    ]) {
      const res = await mirror.get(path)
      expect(res.status, path).toBe(401)
      expect(res.headers['www-authenticate']).toBe('Basic realm="pullcache"')
      expect(errorOf(res.body).code).toBe('UNAUTHORIZED')
    }
    // Learning that cost no pull: only token requests, no manifest GET upstream.
    expect(up.count('GET', `/v2/${SECRET}/manifests/v1`)).toBe(0)

    const wrong = await mirror.get(
      `/v2/${SECRET}/manifests/v1`,
      basic({ user: ALICE.user, password: 'nope' }),
    )
    expect(wrong.status).toBe(401)
    expect(wrong.headers['www-authenticate']).toBe('Basic realm="pullcache"')
    expect(errorOf(wrong.body).code).toBe('UNAUTHORIZED')

    const signedIn = await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))
    expect(signedIn.status).toBe(200)
    expect(sha256(signedIn.body)).toBe(secret.manifestDigest)
    for (const layer of secret.layers) {
      const blob = await mirror.get(`/v2/${SECRET}/blobs/${layer.digest}`, basic(ALICE))
      expect(sha256(blob.body)).toBe(layer.digest)
    }
    // Anonymous clients still get public repositories.
    expect((await mirror.get('/v2/library/alpine/manifests/3')).status).toBe(200)
    // The ping tells containers/image to send the credentials it has for the mirror.
    const ping = await mirror.get('/v2/')
    expect(ping.status).toBe(200)
    expect(ping.headers['www-authenticate']).toBe('Basic realm="pullcache"')

    // The client's Authorization goes nowhere upstream: the token realm sees only the account.
    for (const r of up.requests) {
      expect(r.authorization ?? '').not.toContain(ALICE.user)
      if (r.authorization?.startsWith('Basic')) expect(r.authorization).toBe(`Basic ${UPSTREAM_USER}`)
    }
    const logged = JSON.stringify(mirror.logs)
    expect(logged).not.toContain(ALICE.password)
    expect(logged).not.toContain(basic(ALICE).authorization!.slice(6))
    expect(logged).not.toContain('nope')
    expect(mirror.logs.some((l) => l.event === 'request' && l.user === ALICE.user && l.status === 200)).toBe(
      true,
    )
  })

  test('a private blob is not served under another name; public content is shared by digest without asking upstream', async () => {
    const { up } = fx
    const secret = up.addImage(SECRET, 'v1')
    up.setPrivate(SECRET)
    const alpine = up.addImage('library/alpine', '3')
    up.addImage('library/busybox', '1')
    const mirror = await fx.mirror({ env: accountEnv(await htpasswd('two', ALICE)) })

    for (const layer of secret.layers)
      expect((await mirror.get(`/v2/${SECRET}/blobs/${layer.digest}`, basic(ALICE))).status).toBe(200)
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))).status).toBe(200)
    const privateLayer = secret.layers[0]!.digest
    for (const name of ['library/busybox', 'library/alpine', 'busybox']) {
      const blob = await mirror.get(`/v2/${name}/blobs/${privateLayer}`)
      expect(blob.status, name).toBe(404)
      expect(errorOf(blob.body).code).toBe('BLOB_UNKNOWN')
      expect((await mirror.head(`/v2/${name}/blobs/${privateLayer}`)).status).toBe(404)
      const manifest = await mirror.get(`/v2/${name}/manifests/${secret.manifestDigest}`)
      expect(manifest.status).toBe(404)
      expect(errorOf(manifest.body).code).toBe('MANIFEST_UNKNOWN')
    }
    // Signed-in clients have the account's access, so they get it.
    expect((await mirror.get(`/v2/library/busybox/blobs/${privateLayer}`, basic(ALICE))).status).toBe(200)
    // ... and that did not make it readable anonymously under that name.
    expect((await mirror.get(`/v2/library/busybox/blobs/${privateLayer}`)).status).toBe(404)

    // A public layer pulled once anonymously is shared under any readable name by digest alone.
    const publicLayer = alpine.layers[0]!.digest
    expect((await mirror.get(`/v2/library/alpine/blobs/${publicLayer}`)).status).toBe(200)
    await mirror.get('/v2/library/busybox/tags/list') // learns that busybox is public
    up.reset()
    const shared = await mirror.get(`/v2/library/busybox/blobs/${publicLayer}`)
    expect(shared.status).toBe(200)
    expect(sha256(shared.body)).toBe(publicLayer)
    expect(up.requests).toEqual([])
  })

  test('private stays private after the account is removed by reload, and after a restart', async () => {
    const { up } = fx
    const secret = up.addImage(SECRET, 'v1')
    up.setPrivate(SECRET)
    up.addImage('library/alpine', '3')
    const file = await htpasswd('three', ALICE)
    let mirror = await fx.mirror({ env: accountEnv(file) })
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))).status).toBe(200)
    for (const layer of secret.layers) await mirror.get(`/v2/${SECRET}/blobs/${layer.digest}`, basic(ALICE))
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`)).status).toBe(401)

    const { changed } = reloadWith(mirror, up.url, { PULLCACHE_AUTH_HTPASSWD: file })
    expect(changed).toContain('upstream.credentials')
    const checks = () => [
      mirror.get(`/v2/${SECRET}/manifests/v1`),
      mirror.get(`/v2/${SECRET}/manifests/${secret.manifestDigest}`),
      mirror.get(`/v2/${SECRET}/blobs/${secret.layers[0]!.digest}`),
    ]
    for (const res of await Promise.all(checks())) expect(res.status).toBe(401)
    expect((await mirror.get(`/v2/library/alpine/blobs/${secret.layers[0]!.digest}`)).status).toBe(404)

    await mirror.close({ wipe: false })
    mirror = await fx.mirror({ dataDir: mirror.dataDir, env: { PULLCACHE_AUTH_HTPASSWD: file } })
    for (const res of await Promise.all(checks())) expect(res.status).toBe(401)
    expect((await mirror.get(`/v2/library/alpine/blobs/${secret.layers[1]!.digest}`)).status).toBe(404)
    // A signed-in client still gets what is cached.
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))).status).toBe(200)
  })

  test('a repository first seen without an account is checked once the account comes, and after it goes', async () => {
    const { up } = fx
    const secret = up.addImage(SECRET, 'v1')
    up.setPrivate(SECRET)
    up.addImage('library/alpine', '3')
    const file = await htpasswd('ten', ALICE)
    const mirror = await fx.mirror({ env: { PULLCACHE_AUTH_HTPASSWD: file } })
    // Without an account nothing private can be fetched: upstream refuses, the client gets 404.
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`)).status).toBe(404)
    expect((await mirror.get('/v2/library/alpine/manifests/3')).status).toBe(200)

    reloadWith(mirror, up.url, accountEnv(file))
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))).status).toBe(200)
    const layer = secret.layers[0]!.digest
    expect((await mirror.get(`/v2/${SECRET}/blobs/${layer}`, basic(ALICE))).status).toBe(200)
    expect((await mirror.get(`/v2/library/alpine/blobs/${layer}`)).status).toBe(404)
    expect((await mirror.get(`/v2/${SECRET}/blobs/${layer}`)).status).toBe(401)

    reloadWith(mirror, up.url, { PULLCACHE_AUTH_HTPASSWD: file })
    expect((await mirror.get(`/v2/library/alpine/blobs/${layer}`)).status).toBe(404)
    expect((await mirror.get(`/v2/${SECRET}/blobs/${layer}`)).status).toBe(401)
    expect((await mirror.get(`/v2/${SECRET}/manifests/${secret.manifestDigest}`)).status).toBe(401)
  })

  test('the htpasswd file is read again on reload; a broken one keeps the accounts in force', async () => {
    const { up } = fx
    up.addImage(SECRET, 'v1')
    up.setPrivate(SECRET)
    const file = await htpasswd('four', ALICE)
    const mirror = await fx.mirror({ env: accountEnv(file) })
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))).status).toBe(200)
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(BOB))).status).toBe(401)

    await htpasswd('four', BOB)
    expect(reloadWith(mirror, up.url, accountEnv(file)).changed).toContain('auth.htpasswd')
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(BOB))).status).toBe(200)
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))).status).toBe(401)

    // An MD5 line (htpasswd without -B): the file is refused, and said why, with its line.
    const { stdout } = await run('htpasswd', ['-n', '-m', '-b', 'carol', 'carol-pass'])
    await writeFile(file, `${stdout.trim()}\n`, { flag: 'a' })
    reloadWith(mirror, up.url, accountEnv(file))
    const rejected = mirror.logs.find((l) => l.event === 'auth.htpasswd_rejected')
    expect(String(rejected?.error)).toMatch(/line 2: user "carol" has a MD5 \(\$apr1\$\) hash; only bcrypt/)
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(BOB))).status).toBe(200)
  })

  test('repeated failures from one address are throttled with 429, whatever the password', async () => {
    const { up } = fx
    up.addImage('library/alpine', '3')
    const mirror = await fx.mirror({ env: accountEnv(await htpasswd('five', ALICE)) })
    for (let i = 0; i < 10; i++) {
      const res = await mirror.get(
        '/v2/library/alpine/manifests/3',
        basic({ user: 'alice', password: `g${i}` }),
      )
      expect(res.status).toBe(401)
    }
    // Refused before any password check: the right password gets the same 429 as a wrong one.
    for (const creds of [{ user: 'alice', password: 'g10' }, ALICE]) {
      const res = await mirror.get('/v2/library/alpine/manifests/3', basic(creds))
      expect(res.status).toBe(429)
      expect(errorOf(res.body).code).toBe('TOOMANYREQUESTS')
      expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
    }
    // Anonymous requests are not what was throttled.
    expect((await mirror.get('/v2/library/alpine/manifests/3')).status).toBe(200)
  })

  test('an unknown user costs the same bcrypt work as a known one', async () => {
    const path = join(dir, 'cost')
    // Cost 10: about 50 ms a comparison, enough to tell apart from a lookup miss.
    await writeFile(path, `${ALICE.user}:${bcrypt.hashSync(ALICE.password, 10)}\n`)
    const mirror = await fx.mirror({ env: accountEnv(path) })
    const time = async (user: string) => {
      const started = performance.now()
      expect((await mirror.get('/v2/', basic({ user, password: 'wrong' }))).status).toBe(401)
      return performance.now() - started
    }
    // The first comparison also pays for compiling bcrypt's code: one before measuring. Then
    // alternate, so that a burst of load on the machine falls on both sides, and compare medians.
    await time('warm-up')
    const known: number[] = []
    const unknown: number[] = []
    for (let i = 0; i < 3; i++) {
      known.push(await time(ALICE.user))
      unknown.push(await time('mallory'))
    }
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[1]!
    expect(median(unknown)).toBeGreaterThan(median(known) / 3)
  })

  test('stats and the status page name private repositories only to signed-in viewers', async () => {
    const { up } = fx
    up.addImage(SECRET, 'v1')
    up.setPrivate(SECRET)
    up.addImage('library/alpine', '3')
    const mirror = await fx.mirror({ env: accountEnv(await htpasswd('six', ALICE)) })
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))).status).toBe(200)
    expect((await mirror.get('/v2/library/alpine/manifests/3')).status).toBe(200)

    for (const path of ['/_pullcache/stats', '/', '/_pullcache/', '/metrics']) {
      const anonymous = await mirror.get(path)
      expect(anonymous.status, path).toBe(200)
      expect(anonymous.body.toString(), path).not.toContain(SECRET)
    }
    const stats = JSON.parse((await mirror.get('/_pullcache/stats')).body.toString())
    expect(stats.top_repositories.map((r: { repo: string }) => r.repo)).toEqual(['library/alpine'])
    expect(stats.top_tags.map((t: { repo: string }) => t.repo)).toEqual(['library/alpine'])
    const full = await mirror.get('/_pullcache/stats', basic(ALICE))
    expect(full.body.toString()).toContain(SECRET)
    expect((await mirror.get('/', basic(ALICE))).body.toString()).toContain(SECRET)
    // Where a browser signs in: asked for the account, then sent to the full page.
    const login = await mirror.get('/_pullcache/login')
    expect(login.status).toBe(401)
    expect(login.headers['www-authenticate']).toBe('Basic realm="pullcache"')
    const signedIn = await mirror.get('/_pullcache/login', basic(ALICE))
    expect(signedIn.status).toBe(303)
    expect(signedIn.headers.location).toBe('/_pullcache/')
  })

  test('admin.allow limits the operator endpoints to listed networks; health probes and /v2/ stay open', async () => {
    const { up } = fx
    const mirror = await fx.mirror({ env: { PULLCACHE_ADMIN_ALLOW: '10.0.0.0/8, fd00::/8' } })
    for (const path of ['/', '/_pullcache', '/_pullcache/stats', '/metrics']) {
      const res = await mirror.get(path)
      expect(res.status, path).toBe(403)
      expect(errorOf(res.body).code).toBe('DENIED')
    }
    for (const path of ['/_pullcache/healthz', '/v2/'])
      expect((await mirror.get(path)).status, path).toBe(200)
    expect([200, 503]).toContain((await mirror.get('/_pullcache/readyz')).status)

    reloadWith(mirror, up.url, { PULLCACHE_ADMIN_ALLOW: '10.0.0.0/8,127.0.0.0/8' })
    for (const path of ['/', '/_pullcache/stats', '/metrics'])
      expect((await mirror.get(path)).status).toBe(200)
  })

  test('with anonymous access off, every /v2 request needs an account, the ping too', async () => {
    const { up } = fx
    up.addImage('library/alpine', '3')
    const file = await htpasswd('seven', ALICE)
    const mirror = await fx.mirror({
      env: { PULLCACHE_AUTH_HTPASSWD: file, PULLCACHE_AUTH_ANONYMOUS: 'false' },
    })
    for (const path of ['/v2/', '/v2/library/alpine/manifests/3', '/_pullcache/stats']) {
      const res = await mirror.get(path)
      expect(res.status, path).toBe(401)
      expect(res.headers['www-authenticate']).toBe('Basic realm="pullcache"')
    }
    expect((await mirror.get('/v2/', basic(ALICE))).status).toBe(200)
    expect((await mirror.get('/v2/library/alpine/manifests/3', basic(ALICE))).status).toBe(200)
    expect((await mirror.get('/_pullcache/healthz')).status).toBe(200)
  })

  test('what anonymous pulls may read is unknown and upstream cannot be asked: anonymous clients are refused', async () => {
    const { up } = fx
    const alpine = up.addImage('library/alpine', '3')
    const file = await htpasswd('eight', ALICE)
    const mirror = await fx.mirror({ env: accountEnv(file) })
    // Cached by a signed-in client, which needs no check of what anonymous pulls may read.
    expect((await mirror.get('/v2/library/alpine/manifests/3', basic(ALICE))).status).toBe(200)
    reloadWith(mirror, up.url, accountEnv(file, { PULLCACHE_OFFLINE: 'true' }))
    const res = await mirror.get(`/v2/library/alpine/manifests/${alpine.manifestDigest}`)
    expect(res.status).toBe(503)
    expect(errorOf(res.body).code).toBe('UNAVAILABLE')
    expect(res.body.toString()).not.toContain('alice')
    expect(
      (await mirror.get(`/v2/library/alpine/manifests/${alpine.manifestDigest}`, basic(ALICE))).status,
    ).toBe(200)
  })
})

describe('with opaque tokens', () => {
  const fx = useFakeUpstream({ users: { [UPSTREAM_USER]: UPSTREAM_PASSWORD }, tokenFormat: 'opaque' })

  test('an anonymous tags/list decides, and it is not a pull', async () => {
    const { up } = fx
    up.addImage(SECRET, 'v1')
    up.setPrivate(SECRET)
    up.addImage('library/alpine', '3')
    const mirror = await fx.mirror({ env: accountEnv(await htpasswd('nine', ALICE)) })
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`)).status).toBe(401)
    expect((await mirror.get('/v2/library/alpine/manifests/3')).status).toBe(200)
    expect(up.count('GET', `/v2/${SECRET}/manifests/v1`)).toBe(0)
    expect(up.count('GET', `/v2/${SECRET}/tags/list`)).toBe(1)
    expect((await mirror.get(`/v2/${SECRET}/manifests/v1`, basic(ALICE))).status).toBe(200)
  })
})
