// Who may pull what, with the real distribution registry behind its token server and skopeo as
// the client: pullcache holds an upstream account that may pull a private repository; skopeo gets
// it through pullcache only with --creds of a pullcache account (made by the real htpasswd -B).
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startAccessMirror, writeHtpasswd } from './accounts.js'
import { createStandardImages, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import type { Pullcache } from './pullcache.js'
import { createSkopeo, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

const PRIVATE = 'acme/secret'
const CLIENT = { username: 'ci-runner', password: 'runner-pass-6b02c9' }

let work: string
let upstream: Upstream
let skopeo: Skopeo
let small: TestImage
let pullcache: Pullcache | undefined

beforeAll(async () => {
  work = await makeTempDir('access')
  upstream = await startUpstream({ privateRepos: [PRIVATE] })
  skopeo = await createSkopeo(join(work, 'skopeo'))
  small = (await createStandardImages(join(work, 'images'))).small
  await skopeo.push(small, upstream.registry.hostPort, upstream.pusher)
  const { username, password } = upstream.pusher
  await skopeo.run([
    'copy',
    '--quiet',
    '--dest-tls-verify=false',
    '--dest-creds',
    `${username}:${password}`,
    `dir:${small.layoutDir}`,
    `docker://${upstream.registry.hostPort}/${PRIVATE}:v1`,
  ])
})

afterAll(async () => {
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

describe('access control with skopeo', () => {
  it('anonymous skopeo gets public images only; with --creds it gets the private one', async () => {
    pullcache = await startAccessMirror(upstream, await writeHtpasswd(work, CLIENT))
    const host = pullcache.hostPort
    upstream.tokens.reset()

    const publicPull = await skopeo.pull(`${host}/${small.name}:${small.tag}`, join(work, 'public'))
    expect(publicPull.manifest.length).toBeGreaterThan(0)

    const anonymous = await skopeo
      .pull(`${host}/${PRIVATE}:v1`, join(work, 'anonymous'), { timeoutMs: 60_000 })
      .then(
        () => 'pulled',
        (err: Error) => err.message,
      )
    expect(anonymous).not.toBe('pulled')
    expect(anonymous).toMatch(/unauthorized|authentication required/i)

    const signedIn = await skopeo.pull(`${host}/${PRIVATE}:v1`, join(work, 'signed-in'), { creds: CLIENT })
    expect(signedIn.manifest.length).toBeGreaterThan(0)

    // Cached now; still not for anonymous skopeo, and not under the public name either.
    const again = await skopeo.pull(`${host}/${PRIVATE}:v1`, join(work, 'anonymous-2')).then(
      () => 'pulled',
      (err: Error) => err.message,
    )
    expect(again).not.toBe('pulled')

    await pullcache.stop()
    const output = pullcache.output()
    expect(output).not.toContain(CLIENT.password)
    expect(output).not.toContain(Buffer.from(`${CLIENT.username}:${CLIENT.password}`).toString('base64'))
    expect(pullcache.accessLog().some((l) => l.user === CLIENT.username)).toBe(true)
    // The client's credentials never reached upstream: the token server saw the account, and
    // anonymous requests (learning what anonymous pulls may read), nothing else.
    const users = new Set(upstream.tokens.requests.map((r) => r.basicUser))
    expect([...users].sort()).toEqual([upstream.puller.username, null].sort())
    expect(upstream.proxy.requests.some((r) => r.authorization === 'basic')).toBe(false)
  })
})
