// Pullcache configured with a Docker Hub account: it must authenticate its token requests with that
// account (protocol.md §2.1: GET <realm>?service&scope with Basic) and never print the password.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createStandardImages, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { createSkopeo, layoutProblems, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let skopeo: Skopeo
let small: TestImage
let dockerList: TestImage
const running: Pullcache[] = []

beforeAll(async () => {
  work = await makeTempDir('account')
  upstream = await startUpstream()
  skopeo = await createSkopeo(join(work, 'skopeo'))
  const images = await createStandardImages(join(work, 'images'))
  small = images.small
  dockerList = images.dockerList
  for (const image of [small, dockerList])
    await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
})

afterAll(async () => {
  for (const p of running) await p.close()
  await upstream?.close()
  await removeDir(work)
})

/** Every form in which a leaked password could show up in a log line. */
function secretForms(username: string, password: string): string[] {
  return [password, Buffer.from(`${username}:${password}`).toString('base64'), encodeURIComponent(password)]
}

describe('pullcache with an upstream account', () => {
  it('fetches tokens as the configured user and never logs the password', async () => {
    const { username, password } = upstream.puller
    const pullcache = await startPullcache({ upstream: upstream.url, username, password })
    running.push(pullcache)
    upstream.tokens.reset()
    upstream.proxy.reset()

    for (const image of [small, dockerList]) {
      const dest = join(work, `pull-${image.shortName}`)
      const layout = await skopeo.pull(`${pullcache.hostPort}/${image.name}:${image.tag}`, dest, {
        all: true,
      })
      expect(layoutProblems(layout, image)).toEqual([])
    }

    // Tokens for pulls are the account's. The others are anonymous on purpose: they ask what an
    // anonymous pull may read (for clients without an account) and carry no credentials at all.
    const asAccount = upstream.tokens.requests.filter((r) => r.basicUser !== null)
    expect(asAccount.length).toBeGreaterThan(0)
    for (const request of upstream.tokens.requests) {
      if (request.basicUser !== null) {
        expect(request.basicUser).toBe(username)
        expect(request.basicPassword).toBe(password)
      } else {
        expect(request.basicPassword, 'a password without its user').toBeNull()
      }
      expect(request.status).toBe(200)
      expect(request.service).toBe('registry.docker.io')
    }
    // Everything the registry served went to the bearer token; a request without it can only be the
    // one that discovers the challenge (answered 401), and Basic never goes to the registry itself.
    const seen = upstream.proxy.describe()
    expect(upstream.proxy.count({ status: 'success' }), seen).toBeGreaterThan(0)
    for (const r of upstream.proxy.filter({ status: 'success' })) expect(r.authorization, seen).toBe('bearer')
    for (const r of upstream.proxy.filter({ authorized: false })) expect(r.status, seen).toBe(401)
    expect(upstream.proxy.count({ authorized: false }), seen).toBeLessThanOrEqual(1)
    expect(
      upstream.proxy.requests.some((r) => r.authorization === 'basic'),
      seen,
    ).toBe(false)

    await pullcache.stop()
    const output = pullcache.output()
    for (const form of secretForms(username, password)) expect(output).not.toContain(form)
  })

  it('does not log a wrong password either', async () => {
    const username = upstream.puller.username
    const password = 'wrong-password-5e0c7a1b93'
    const pullcache = await startPullcache({ upstream: upstream.url, username, password })
    running.push(pullcache)
    upstream.tokens.reset()
    // The outcome of the pull is pullcache's policy; what matters here is what reaches the logs.
    await skopeo
      .pull(`${pullcache.hostPort}/${small.name}:${small.tag}`, join(work, 'pull-wrong'), {
        timeoutMs: 60_000,
      })
      .catch(() => undefined)
    expect(upstream.tokens.requests.some((r) => r.basicUser === username && r.status === 401)).toBe(true)
    await pullcache.stop()
    const output = pullcache.output()
    for (const form of secretForms(username, password)) expect(output).not.toContain(form)
  })
})
