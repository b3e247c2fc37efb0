// A registry's budget share (upstreams[i].budget_share): the blobs only its repositories use may
// take that part of cache.max_size. Over it, its own least recently used blobs go, down to the
// low mark of its share, and nothing of the other registries' is touched; a blob that another
// registry's repositories also use is not its to give up. A dry run (gc) shows the same plan.

import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { loadConfig } from '../../src/config.js'
import { problems } from '../support/config-problems.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { tmpRoot } from '../support/tmp.js'

const GHCR = 'ghcr.io'
const LAYER = 100_000
/** 2 MB budget; ghcr.io may take a quarter: 500 kB, and goes down to 0.85 of that (425 kB). */
const BUDGET = 2_000_000
const SHARE = 0.25

describe('budget shares of the upstream registries', () => {
  const hub = useFakeUpstream()
  const ghcr = useFakeUpstream()

  test('a registry over its share gives up its own oldest blobs, and only those', async () => {
    const mirror = await hub.mirror({
      env: { PULLCACHE_MAX_SIZE: String(BUDGET) },
      config: { upstreams: [{ host: GHCR, url: ghcr.up.url, budget_share: SHARE }] },
    })
    // Docker Hub: 6 layers (600 kB), well inside the budget as a whole.
    const hubImage = hub.up.addImage('library/app', 'v1', { layers: 6, layerBytes: LAYER })
    for (const layer of hubImage.layers) {
      expect((await mirror.get(`/v2/library/app/blobs/${layer.digest}`)).status).toBe(200)
    }
    // ghcr.io: 8 layers (800 kB), over its 500 kB share; pulled oldest first.
    const ghcrImage = ghcr.up.addImage('org/tool', 'v1', { layers: 8, layerBytes: LAYER })
    for (const layer of ghcrImage.layers) {
      expect((await mirror.get(`/v2/${GHCR}/org/tool/blobs/${layer.digest}`)).status).toBe(200)
    }
    // One shared layer: pulled through both, it belongs to neither alone and stays.
    const shared = new Uint8Array(LAYER).fill(7)
    const sharedDigest = hub.up.addBlob('library/app', shared)
    ghcr.up.addBlob('org/tool', shared)
    expect((await mirror.get(`/v2/library/app/blobs/${sharedDigest}`)).status).toBe(200)
    expect((await mirror.get(`/v2/${GHCR}/org/tool/blobs/${sharedDigest}`)).status).toBe(200)
    // Whatever the commits may have started, one run now sees everything.
    await mirror.server.evictor.idle()
    mirror.server.index.flush()

    const plan = mirror.server.evictor.plan()
    const result = await mirror.server.evictor.run()
    const stored = (digest: string) => mirror.server.index.getBlob(digest) !== undefined
    const ghcrLeft = ghcrImage.layers.filter((l) => stored(l.digest))
    // Down to the low mark of its share (425 kB): the 4 newest of its 8 layers stay.
    expect(ghcrLeft.map((l) => l.digest)).toEqual(ghcrImage.layers.slice(4).map((l) => l.digest))
    expect(result.blobs).toBe(4)
    // The dry run planned exactly those, for the share.
    expect(plan.blobs.map((b) => [b.digest, b.reason])).toEqual(
      ghcrImage.layers.slice(0, 4).map((l) => [l.digest, 'share']),
    )
    // Docker Hub's layers and the shared one are untouched.
    expect(hubImage.layers.every((l) => stored(l.digest))).toBe(true)
    expect(stored(sharedDigest)).toBe(true)
    // An evicted layer is fetched again on demand.
    const again = await mirror.get(`/v2/${GHCR}/org/tool/blobs/${ghcrImage.layers[0]!.digest}`)
    expect(again.status).toBe(200)
  })

  test('a share needs a budget, and the shares cannot add up to more than all of it', async () => {
    const entry = (share: number, host = GHCR) => ({ host, url: 'https://ghcr.io', budget_share: share })
    expect(await problemsOf({ upstreams: [entry(0.5)] })).toContain(
      'upstreams.0.budget_share: a budget share is a share of cache.max_size, which is not set',
    )
    expect(
      await problemsOf({ cache: { max_size: '1GiB' }, upstreams: [entry(0.6), entry(0.5, 'quay.io')] }),
    ).toContain('upstreams: the budget shares of the upstreams add up to more than 1')
    expect((await problemsOf({ cache: { max_size: '1GiB' }, upstreams: [entry(1.5)] }))[0]).toMatch(
      /^upstreams\.0\.budget_share: /,
    )
  })
})

/** The problems of a config file with this content. */
async function problemsOf(content: Record<string, unknown>): Promise<string[]> {
  const file = join(await tmpRoot('pullcache-share'), 'pullcache.json')
  await writeFile(file, JSON.stringify(content))
  return problems(() => loadConfig({ file, env: {} }))
}
