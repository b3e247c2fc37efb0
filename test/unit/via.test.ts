// Via (src/via.ts): what a pullcache adds to the requests it sends upstream, and how it knows a
// request that came back to it round a loop of mirrors.
import { describe, expect, test } from 'vitest'
import { Via } from '../../src/via.js'

describe('Via', () => {
  test('each process has its own id', () => {
    expect(new Via().id).not.toBe(new Via().id)
    expect(new Via().id).toMatch(/^pullcache-[0-9a-f]{12}$/)
  })

  test('a request from a client carries only this process on', () => {
    const via = new Via('pullcache-site')
    expect(via.outgoing()).toBe('1.1 pullcache-site')
  })

  test("a request from another mirror carries that mirror's chain, then this process", async () => {
    const via = new Via('pullcache-central')
    const chain = '1.1 edge-proxy (nginx), 1.1 pullcache-site'
    const seen = await via.within(chain, false, async () => {
      await new Promise((resolve) => setImmediate(resolve))
      return via.outgoing()
    })
    expect(seen).toBe(`${chain}, 1.1 pullcache-central`)
    // Outside the request, nothing of its chain is left behind.
    expect(via.outgoing()).toBe('1.1 pullcache-central')
  })

  test('a chain that names this process is a loop; one that only resembles it is not', () => {
    const via = new Via('pullcache-a1')
    expect(via.isLoop(undefined)).toBe(false)
    expect(via.isLoop('1.1 pullcache-b2')).toBe(false)
    expect(via.isLoop('1.1 pullcache-a10, 1.1 xpullcache-a1')).toBe(false)
    expect(via.isLoop('1.1 pullcache-b2, 1.1 pullcache-a1')).toBe(true)
    expect(via.isLoop('HTTP/1.1 pullcache-a1 (pullcache)')).toBe(true)
    // A chain no honest path of mirrors reaches: refused rather than passed on and grown.
    expect(via.isLoop(`${'1.1 hop, '.repeat(300)}1.1 end`)).toBe(true)
  })
})
