// One fake upstream per test file (or per describe block) and the mirrors a test starts against
// it, with the cleanup every such file needs: mirrors closed (last started first, so a restarted
// mirror goes before the one whose data dir it reused), faults cleared, the rate limit put back to
// what the file started with, request logs emptied. A test that needs a second upstream (one it
// can take away, or one with other options) gets it here too, closed after the test.

import { afterAll, afterEach, beforeAll } from 'vitest'
import { type FakeUpstream, type FakeUpstreamOptions, startFakeUpstream } from './fake-upstream.js'
import { startMirror, type TestMirror } from './start-mirror.js'

type MirrorOptions = Omit<Parameters<typeof startMirror>[0], 'upstream'> & { upstream?: string }

export interface FakeUpstreamFixture {
  readonly up: FakeUpstream
  /** startMirror against this upstream (or another, given as `upstream`), closed after the test. */
  mirror(opts?: MirrorOptions): Promise<TestMirror>
  /** A mirror for the whole file, started in beforeAll: closed (and wiped) in afterAll. */
  fileMirror(opts?: MirrorOptions): Promise<TestMirror>
  /** Another fake upstream for this test alone, closed after it (closing it sooner is fine). */
  upstream(options?: FakeUpstreamOptions): Promise<FakeUpstream>
}

export function useFakeUpstream(options?: FakeUpstreamOptions): FakeUpstreamFixture {
  let up: FakeUpstream | undefined
  const started: TestMirror[] = []
  const fileMirrors: TestMirror[] = []
  const extraUpstreams: FakeUpstream[] = []
  const start = (opts: MirrorOptions) => startMirror({ ...opts, upstream: opts.upstream ?? fixture.up.url })
  beforeAll(async () => {
    up = await startFakeUpstream(options)
  })
  afterAll(async () => {
    for (const m of fileMirrors.splice(0).reverse()) await m.close()
    await up?.close()
  })
  afterEach(async () => {
    for (const m of started.splice(0).reverse()) await m.close()
    for (const u of extraUpstreams.splice(0)) await u.close()
    up?.clearFaults()
    up?.setRateLimit(options?.rateLimit)
    up?.setReferrersApi(options?.referrersApi ?? false)
    up?.reset()
  })
  const fixture: FakeUpstreamFixture = {
    get up() {
      if (!up) throw new Error('the fake upstream starts in beforeAll')
      return up
    },
    async mirror(opts = {}) {
      const m = await start(opts)
      started.push(m)
      return m
    },
    async fileMirror(opts = {}) {
      const m = await start(opts)
      fileMirrors.push(m)
      return m
    },
    async upstream(extraOptions) {
      const u = await startFakeUpstream(extraOptions)
      extraUpstreams.push(u)
      return u
    },
  }
  return fixture
}
