// Client accounts change while pullcache runs, the way an operator changes them: the real
// `htpasswd -B` edits the file and a real SIGHUP makes the running process read it again. The
// client asks for a private repository that pullcache's upstream account may read, so a 200 is
// the private manifest itself and a 401 is pullcache refusing it.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sha256 } from '../support/sha256.js'
import { createSecretImage, htpasswd, startAccessMirror, writeHtpasswd } from './accounts.js'
import type { TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import type { Pullcache } from './pullcache.js'
import { ACCEPT_ALL_MANIFESTS, closeRegistryClient, fetchHashed } from './registry-client.js'
import { type Creds, createSkopeo, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

const ALICE: Creds = { username: 'alice', password: 'alice-pass-3e81f0' }
const BOB: Creds = { username: 'bob', password: 'bob-pass-a27c95' }

let work: string
let upstream: Upstream
let skopeo: Skopeo
let secret: TestImage
let pullcache: Pullcache
let htpasswdFile: string

beforeAll(async () => {
  work = await makeTempDir('accreload')
  secret = await createSecretImage(join(work, 'images'), [32 * 1024])
  upstream = await startUpstream({ privateRepos: [secret.name] })
  skopeo = await createSkopeo(join(work, 'skopeo'))
  await skopeo.push(secret, upstream.registry.hostPort, upstream.pusher)
  htpasswdFile = await writeHtpasswd(work, ALICE)
  pullcache = await startAccessMirror(upstream, htpasswdFile)
})

afterAll(async () => {
  await closeRegistryClient()
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

/** GET of the private manifest as `creds`: the status, the challenge and what came back. */
async function manifestAs(creds: Creds) {
  const basic = Buffer.from(`${creds.username}:${creds.password}`).toString('base64')
  const res = await fetchHashed(`${pullcache.url}/v2/${secret.name}/manifests/${secret.tag}`, {
    headers: { accept: ACCEPT_ALL_MANIFESTS, authorization: `Basic ${basic}` },
    keepBody: true,
    timeoutMs: 30_000,
  })
  return { status: res.status, challenge: res.headers['www-authenticate'], digest: res.digest }
}

/** skopeo inspect --creds: the digest of what it got, or its error. */
function skopeoAs(creds: Creds): Promise<string> {
  return skopeo.inspectRaw(`${pullcache.hostPort}/${secret.name}:${secret.tag}`, creds).then(
    (raw) => sha256(raw),
    (err: Error) => err.message,
  )
}

/** SIGHUP the process and wait for its answer about the htpasswd file. */
async function reload(event: 'auth.htpasswd_loaded' | 'auth.htpasswd_rejected') {
  const mark = pullcache.mark()
  pullcache.signal('SIGHUP')
  const line = await pullcache.waitForEvent(event, mark)
  await pullcache.waitForEvent('config.reloaded', mark)
  return line
}

describe('client accounts re-read on SIGHUP', () => {
  it('an account added to the file works after SIGHUP, and stops working once removed', async () => {
    // Before: bob has no account; his credentials are refused, not taken as anonymous.
    const before = await manifestAs(BOB)
    expect(before.status).toBe(401)
    expect(before.challenge).toBe('Basic realm="pullcache"')
    expect(await skopeoAs(BOB)).toMatch(/unauthorized|authentication required/i)

    await htpasswd(['-B', '-b', htpasswdFile, BOB.username, BOB.password])
    const loaded = await reload('auth.htpasswd_loaded')
    expect(loaded.accounts).toBe(2)
    const added = await manifestAs(BOB)
    expect(added.status).toBe(200)
    expect(added.digest).toBe(secret.top.digest)
    expect(await skopeoAs(BOB)).toBe(secret.top.digest)

    await htpasswd(['-D', htpasswdFile, BOB.username])
    const removed = await reload('auth.htpasswd_loaded')
    expect(removed.accounts).toBe(1)
    const after = await manifestAs(BOB)
    expect(after.status).toBe(401)
    expect(after.challenge).toBe('Basic realm="pullcache"')
    expect(await skopeoAs(BOB)).toMatch(/unauthorized|authentication required/i)
    // The account that stayed works throughout.
    expect((await manifestAs(ALICE)).status).toBe(200)
  })

  it('a file broken on reload keeps the accounts in force until it is fixed', async () => {
    await htpasswd(['-B', '-b', htpasswdFile, BOB.username, BOB.password])
    expect((await reload('auth.htpasswd_loaded')).accounts).toBe(2)

    // An MD5 entry (htpasswd -m) makes the whole file unusable: pullcache says so and keeps both
    // accounts. Alice has not signed in since the reload just above, which forgot every
    // remembered sign-in, so her 200 comes from the kept accounts.
    const carol: Creds = { username: 'carol', password: 'carol-pass-5d0e14' }
    await htpasswd(['-m', '-b', htpasswdFile, carol.username, carol.password])
    const rejected = await reload('auth.htpasswd_rejected')
    expect(rejected.level).toBe('error')
    expect(rejected.kept_accounts).toBe(2)
    expect(String(rejected.error)).toContain('MD5')
    expect((await manifestAs(ALICE)).status).toBe(200)
    expect((await manifestAs(BOB)).status).toBe(200)
    expect((await manifestAs(carol)).status).toBe(401)

    // Fixed again (carol's MD5 entry and bob removed): the file is in force again.
    await htpasswd(['-D', htpasswdFile, carol.username])
    await htpasswd(['-D', htpasswdFile, BOB.username])
    expect((await reload('auth.htpasswd_loaded')).accounts).toBe(1)
    expect((await manifestAs(BOB)).status).toBe(401)
    expect((await manifestAs(ALICE)).status).toBe(200)

    // No password of any account appears in what pullcache printed.
    const output = pullcache.output()
    for (const creds of [ALICE, BOB, carol]) expect(output).not.toContain(creds.password)
  })
})
