// Several registries on one port: the root upstream (Docker Hub's place), a bearer-token registry
// named "ghcr.io" and a Basic-auth one named "registry.example.com:5443", each a fake upstream on
// loopback. Requests reach one by ?ns= or by a path prefix; a registry not configured is answered
// 404 NAME_UNKNOWN and never contacted. The store is shared: a digest is stored once.

import { readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import bcrypt from 'bcryptjs'
import { beforeAll, describe, expect, test } from 'vitest'
import { loadConfig } from '../../src/config.js'
import { type FakeUpstream, sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { runCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'

const GHCR = 'ghcr.io'
const CORP = 'registry.example.com:5443'
const CORP_USER = { user: 'bot', password: 'corp-secret-51c2' }
const ALICE = { user: 'alice', password: 'alice-pass-0b7e' }

function basic(u: { user: string; password: string }): Record<string, string> {
  return { authorization: `Basic ${Buffer.from(`${u.user}:${u.password}`).toString('base64')}` }
}

function errorOf(body: Buffer): { code: string; message: string; detail: Record<string, unknown> } {
  return JSON.parse(body.toString()).errors[0]
}

/** Every request a fake upstream saw, on any of its hosts (registry, token service, CDN). */
const seen = (up: FakeUpstream) => up.requests.length

describe('several upstream registries on one port', () => {
  const hub = useFakeUpstream()
  const ghcrFx = useFakeUpstream()
  const corpFx = useFakeUpstream({ auth: 'basic', users: { [CORP_USER.user]: CORP_USER.password } })
  const others = () => [hub.up, ghcrFx.up, corpFx.up]
  let mirror: TestMirror
  let dir: string
  let passwordFile: string
  let htpasswd: string
  const upstreamsConfig = (password = passwordFile) => ({
    upstreams: [
      { host: GHCR, url: ghcrFx.up.url },
      { host: CORP, url: corpFx.up.url, username: CORP_USER.user, password_file: password },
    ],
  })

  beforeAll(async () => {
    dir = await tmpRoot('pullcache-upstreams')
    passwordFile = join(dir, 'corp-password')
    await writeFile(passwordFile, `${CORP_USER.password}\n`)
    htpasswd = join(dir, 'htpasswd')
    await writeFile(htpasswd, `${ALICE.user}:${bcrypt.hashSync(ALICE.password, 4)}\n`)
    mirror = await hub.fileMirror({ env: { PULLCACHE_AUTH_HTPASSWD: htpasswd }, config: upstreamsConfig() })
  })

  /** The config a SIGHUP would load, with `config` as the file. */
  async function reloadWith(config: Record<string, unknown>) {
    const file = join(dir, `reload-${Math.random()}.json`)
    await writeFile(file, JSON.stringify(config))
    const next = loadConfig({
      file,
      env: {
        PULLCACHE_LISTEN: '127.0.0.1:0',
        PULLCACHE_DATA_DIR: mirror.dataDir,
        PULLCACHE_UPSTREAM: hub.up.url,
        PULLCACHE_LOG_LEVEL: 'debug',
        PULLCACHE_AUTH_HTPASSWD: htpasswd,
      },
    })
    return mirror.server.reload(next)
  }

  test('no ns and no prefix, or the root host, go to the root upstream', async () => {
    const img = hub.up.addImage('library/alpine', '3.20')
    for (const path of [
      '/v2/alpine/manifests/3.20',
      '/v2/library/alpine/manifests/3.20?ns=docker.io',
      '/v2/docker.io/library/alpine/manifests/3.20?ns=docker.io',
      '/v2/docker.io/alpine/manifests/3.20',
    ]) {
      const res = await mirror.get(path)
      expect(res.status, path).toBe(200)
      expect(res.headers['docker-content-digest'], path).toBe(img.manifestDigest)
    }
    expect(seen(ghcrFx.up) + seen(corpFx.up)).toBe(0)
  })

  test('?ns=<host> and a /v2/<host>/ prefix reach that upstream, with the rest as the name', async () => {
    const img = ghcrFx.up.addImage('org/app', 'v1')
    const byNs = await mirror.get('/v2/org/app/manifests/v1?ns=ghcr.io')
    expect(byNs.status).toBe(200)
    expect(byNs.headers['docker-content-digest']).toBe(img.manifestDigest)
    const byPrefix = await mirror.get('/v2/ghcr.io/org/app/manifests/v1')
    expect(byPrefix.status).toBe(200)
    expect(byPrefix.headers['docker-content-digest']).toBe(img.manifestDigest)
    const layer = img.layers[0]!
    const blob = await mirror.get(`/v2/ghcr.io/org/app/blobs/${layer.digest}`)
    expect(blob.status).toBe(200)
    expect(sha256(blob.body)).toBe(layer.digest)
    // Upstream was asked for its own name, never with the host prefix; no library/ added.
    expect(ghcrFx.up.requests.some((r) => r.path.startsWith('/v2/org/app/manifests/'))).toBe(true)
    expect(ghcrFx.up.requests.some((r) => r.path.includes('ghcr.io'))).toBe(false)
    expect(hub.up.count('GET', /\/v2\/.*org\/app/)).toBe(0)
    const tags = await mirror.get('/v2/ghcr.io/org/app/tags/list')
    expect(JSON.parse(tags.body.toString()).tags).toEqual(['v1'])
  })

  test('an ns or a prefix naming no configured upstream is 404 NAME_UNKNOWN and contacts nobody', async () => {
    const before = others().map(seen)
    for (const path of [
      '/v2/library/alpine/manifests/latest?ns=quay.io',
      '/v2/quay.io/org/app/manifests/latest',
      `/v2/localhost:5000/org/app/blobs/sha256:${'a'.repeat(64)}`,
      '/v2/localhost/org/app/tags/list',
      '/v2/quay.io/org/app/tags/list?ns=quay.io',
      // A prefix and an ns that disagree name no one upstream.
      '/v2/ghcr.io/org/app/manifests/v1?ns=docker.io',
      `/v2/org/app/referrers/sha256:${'b'.repeat(64)}?ns=gcr.io`,
    ]) {
      const res = await mirror.get(path)
      expect(res.status, path).toBe(404)
      const err = errorOf(res.body)
      expect(err.code, path).toBe('NAME_UNKNOWN')
      expect(JSON.stringify(err.detail), path).toMatch(
        /pullcache mirrors docker\.io, ghcr\.io, registry\.example\.com:5443 only/,
      )
    }
    expect(others().map(seen)).toEqual(before)
  })

  test('the same digest from two registries is stored once and is a hit through the other', async () => {
    const bytes = new Uint8Array(Buffer.from(`shared layer ${Math.random()}`.repeat(500)))
    const digest = hub.up.addBlob('library/shared', bytes)
    expect(ghcrFx.up.addBlob('org/shared', bytes)).toBe(digest)
    const first = await mirror.get(`/v2/library/shared/blobs/${digest}`)
    expect(first.headers['x-pullcache-cache']).toBe('miss')
    const before = seen(ghcrFx.up)
    const second = await mirror.get(`/v2/ghcr.io/org/shared/blobs/${digest}`)
    expect(second.status).toBe(200)
    expect(second.headers['x-pullcache-cache']).toBe('hit')
    expect(sha256(second.body)).toBe(digest)
    // Public content (anonymous pulls of the root may read it) is shared by digest: no question asked.
    expect(seen(ghcrFx.up)).toBe(before)
    const hex = digest.slice('sha256:'.length)
    const files = await readdir(join(mirror.dataDir, 'blobs', 'sha256', hex.slice(0, 2)))
    expect(files.filter((f) => f.startsWith(hex))).toHaveLength(1)
  })

  test("a repository of one upstream never sees another's tag of the same name", async () => {
    const fromHub = hub.up.addImage('org/same', 'v1')
    const fromGhcr = ghcrFx.up.addImage('org/same', 'v1')
    expect(fromHub.manifestDigest).not.toBe(fromGhcr.manifestDigest)
    for (let round = 0; round < 2; round++) {
      const a = await mirror.get('/v2/org/same/manifests/v1')
      const b = await mirror.get('/v2/org/same/manifests/v1?ns=ghcr.io')
      const c = await mirror.get('/v2/ghcr.io/org/same/manifests/v1')
      expect(a.headers['docker-content-digest']).toBe(fromHub.manifestDigest)
      expect(b.headers['docker-content-digest']).toBe(fromGhcr.manifestDigest)
      expect(c.headers['docker-content-digest']).toBe(fromGhcr.manifestDigest)
    }
    const tags = await mirror.get('/v2/org/same/tags/list')
    expect(JSON.parse(tags.body.toString()).tags).toEqual(['v1'])
    // By digest, content is content wherever it came from (and public here): served as within
    // one registry, without asking either upstream.
    const before = others().map(seen)
    const cross = await mirror.get(`/v2/org/same/manifests/${fromGhcr.manifestDigest}`)
    expect(cross.status).toBe(200)
    expect(sha256(cross.body)).toBe(fromGhcr.manifestDigest)
    expect(others().map(seen)).toEqual(before)
  })

  test('a Basic-auth upstream gets its account; anonymous clients get only what it lets anyone read', async () => {
    const img = corpFx.up.addImage('team/tool', '1.0')
    const anonymous = await mirror.get(`/v2/${CORP}/team/tool/manifests/1.0`)
    expect(anonymous.status).toBe(401)
    const signedIn = await mirror.get(`/v2/${CORP}/team/tool/manifests/1.0`, basic(ALICE))
    expect(signedIn.status).toBe(200)
    expect(signedIn.headers['docker-content-digest']).toBe(img.manifestDigest)
    const layer = img.layers[1]!
    const blob = await mirror.get(`/v2/team/tool/blobs/${layer.digest}?ns=${CORP}`, basic(ALICE))
    expect(sha256(blob.body)).toBe(layer.digest)
    const withAccount = corpFx.up.requests.filter((r) => r.authorization === `Basic ${CORP_USER.user}`)
    expect(withAccount.length).toBeGreaterThan(0)
    // What the account fetched is not served to anonymous clients under another registry's name.
    const elsewhere = await mirror.get(`/v2/library/probe/blobs/${layer.digest}`)
    expect(elsewhere.status).toBe(404)
    expect(errorOf(elsewhere.body).code).toBe('BLOB_UNKNOWN')
    // The client's own credentials never go upstream.
    expect(corpFx.up.requests.some((r) => r.authorization === `Basic ${ALICE.user}`)).toBe(false)
  })

  test('stats and metrics break down by upstream', async () => {
    const img = ghcrFx.up.addImage('org/counted', 'v1')
    await mirror.get('/v2/ghcr.io/org/counted/manifests/v1')
    await mirror.get('/v2/ghcr.io/org/counted/manifests/v1')
    await mirror.server.index.flush()
    const stats = JSON.parse((await mirror.get('/_pullcache/stats', basic(ALICE))).body.toString())
    expect(stats.upstreams.map((u: { host: string }) => u.host)).toEqual(['docker.io', GHCR, CORP])
    const ghcr = stats.upstreams[1]
    expect(ghcr.url).toBe(ghcrFx.up.url)
    expect(ghcr.totals.requests).toBeGreaterThanOrEqual(2)
    const sum = (key: string) =>
      stats.upstreams.reduce((n: number, u: { totals: Record<string, number> }) => n + u.totals[key]!, 0)
    expect(sum('requests')).toBe(stats.overall.requests)
    expect(sum('bytes_from_cache')).toBe(stats.overall.bytes_from_cache)
    expect(stats.upstream.url).toBe(hub.up.url)
    const metrics = (await mirror.get('/metrics')).body.toString()
    expect(metrics).toMatch(
      /^pullcache_requests_total\{upstream="ghcr\.io",kind="manifest",method="GET",result="hit"\} [1-9]/m,
    )
    expect(metrics).toMatch(
      /^pullcache_upstream_requests_total\{upstream="ghcr\.io",kind="manifest",method="GET",status="200"\} [1-9]/m,
    )
    expect(metrics).toMatch(/^pullcache_upstream_requests_total\{upstream="registry\.example\.com:5443",/m)
    expect(img.manifestDigest).toMatch(/^sha256:/)
    const ready = JSON.parse((await mirror.get('/_pullcache/readyz')).body.toString())
    expect(Object.keys(ready.checks.upstreams)).toEqual([GHCR, CORP])
    expect(ready.checks.upstreams[GHCR].ok).toBe(true)
  })

  test('pullcache stats, beside the running server, breaks down by the configured upstreams', async () => {
    await mirror.server.index.flush()
    const file = join(dir, 'cli.json')
    await writeFile(file, JSON.stringify(upstreamsConfig()))
    const table = await runCli(['stats', '--config', file, '--data-dir', mirror.dataDir])
    expect(table.code).toBe(0)
    expect(table.stdout).toMatch(/^upstream +requests/m)
    for (const host of ['docker.io', GHCR, CORP])
      expect(table.stdout).toMatch(new RegExp(`^${host.replace(/\./g, '\\.')} +\\d+`, 'm'))
    const json = await runCli(['stats', '--json', '--config', file, '--data-dir', mirror.dataDir])
    const report = JSON.parse(json.stdout)
    expect(report.upstreams.map((u: { host: string; url: string }) => [u.host, u.url])).toEqual([
      ['docker.io', 'https://registry-1.docker.io'],
      [GHCR, ghcrFx.up.url],
      [CORP, corpFx.up.url],
    ])
    expect(report.upstreams[1].totals.requests).toBeGreaterThan(0)
  })

  test('the status page has a line per upstream', async () => {
    const page = (await mirror.get('/', basic(ALICE))).body.toString()
    expect(page).toContain('By upstream')
    for (const host of ['docker.io', GHCR, CORP]) expect(page).toContain(`data-host="${host}"`)
  })

  test("SIGHUP reloads an upstream's credentials; changing the list needs a restart", async () => {
    const other = join(dir, 'corp-password-rotated')
    await writeFile(other, 'rotated-secret\n')
    const rotated = await reloadWith(upstreamsConfig(other))
    expect(rotated.changed).toContain('upstreams.1.credentials')
    expect(rotated.needRestart).toEqual([])
    // The rotated password is what goes upstream now: the fake refuses it (a 401 upstream is,
    // as on Docker Hub, a repository the account cannot see: 404 here).
    corpFx.up.addImage('team/rotated', '1.0')
    const refused = await mirror.get(`/v2/${CORP}/team/rotated/manifests/1.0`, basic(ALICE))
    expect(refused.status).toBe(404)
    const back = await reloadWith(upstreamsConfig())
    expect(back.changed).toContain('upstreams.1.credentials')
    expect((await mirror.get(`/v2/${CORP}/team/rotated/manifests/1.0`, basic(ALICE))).status).toBe(200)
    const freshness = await reloadWith({
      upstreams: [{ host: GHCR, url: ghcrFx.up.url, tag_freshness: '5m' }, upstreamsConfig().upstreams[1]],
    })
    expect(freshness.changed).toEqual(['upstreams.0.tag_freshness'])
    const added = await reloadWith({
      upstreams: [...upstreamsConfig().upstreams, { host: 'quay.io', url: 'https://quay.io' }],
    })
    expect(added.needRestart).toEqual(['upstreams'])
    // Not applied: quay.io is still not mirrored.
    expect((await mirror.get('/v2/quay.io/org/app/manifests/latest')).status).toBe(404)
    await reloadWith(upstreamsConfig())
  })
})
