// One fake upstream per test file and the mirrors a test starts against it, with the cleanup
// every such file needs: mirrors closed (last started first, so a restarted mirror goes before
// the one whose data dir it reused), faults and rate limits cleared, request logs emptied.

import { afterAll, afterEach, beforeAll } from 'vitest'
import { type FakeUpstream, type FakeUpstreamOptions, startFakeUpstream } from './fake-upstream.js'
import { startMirror, type TestMirror } from './start-mirror.js'

type MirrorOptions = Omit<Parameters<typeof startMirror>[0], 'upstream'> & { upstream?: string }

export function useFakeUpstream(options?: FakeUpstreamOptions): {
  readonly up: FakeUpstream
  /** startMirror against this upstream (or another, given as `upstream`), closed after the test. */
  mirror(opts?: MirrorOptions): Promise<TestMirror>
} {
  let up: FakeUpstream | undefined
  const started: TestMirror[] = []
  beforeAll(async () => {
    up = await startFakeUpstream(options)
  })
  afterAll(async () => {
    await up?.close()
  })
  afterEach(async () => {
    for (const m of started.splice(0).reverse()) await m.close()
    up?.clearFaults()
    up?.setRateLimit(undefined)
    up?.reset()
  })
  return {
    get up() {
      if (!up) throw new Error('the fake upstream starts in beforeAll')
      return up
    },
    async mirror(opts = {}) {
      const m = await startMirror({ ...opts, upstream: opts.upstream ?? this.up.url })
      started.push(m)
      return m
    },
  }
}
