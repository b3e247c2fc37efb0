// The status page's badge and banner say what the document's upstream state says: "online"
// only while upstream answers, never while the last contact failed.

import { describe, expect, test } from 'vitest'
import { renderStatusPage } from '../../src/http/status-page-render.js'
import type { StatsReport } from '../../src/mirror/stats-report.js'
import { busyReport, emptyReport, GENERATED_AT, HOSTILE_MESSAGE } from '../support/stats-fixture.js'

function withUpstream(patch: Partial<StatsReport['upstream']>, doc = emptyReport()): StatsReport {
  return { ...doc, upstream: { ...doc.upstream, ...patch } }
}

/** The header's badge element. */
function badge(page: string): string {
  const m = /<span class="badge [^"]*"[^>]*>[^<]*<\/span>/.exec(page)
  if (!m) throw new Error('no badge on the page')
  return m[0]
}

const FAILED_AT = '2026-05-01T14:24:30.000Z' // 30 s before GENERATED_AT

describe('the upstream badge', () => {
  test('online: upstream answered, and nothing failed since', () => {
    const page = renderStatusPage(withUpstream({ state: 'online', last_answer: GENERATED_AT }))
    expect(badge(page)).toContain('>online</span>')
    expect(badge(page)).toContain('data-state="online"')
    expect(page).toContain('<title>pullcache</title>')
    expect(page).not.toContain('data-testid="unreachable-banner"')
    expect(page).toContain('last answer <time')
  })

  test('unreachable: the badge, a banner, the title and the last failure say so', () => {
    const page = renderStatusPage(
      withUpstream({
        state: 'unreachable',
        last_answer: '2026-05-01T14:00:00.000Z',
        last_failure: {
          at: FAILED_AT,
          message: 'manifest GET http://hub: upstream unreachable: ECONNREFUSED',
        },
      }),
    )
    expect(badge(page)).toContain('>upstream unreachable (serving from cache)</span>')
    expect(page).not.toContain('>online</span>')
    expect(page).toContain('<title>pullcache (upstream unreachable)</title>')
    expect(page).toContain('data-testid="unreachable-banner"')
    expect(page).toContain('last tried 30 s ago')
    expect(page).toContain('last failure <time datetime="2026-05-01T14:24:30.000Z"')
    expect(page).toContain('ECONNREFUSED')
  })

  test('offline on purpose wins over any last contact: "offline mode"', () => {
    for (const state of ['online', 'unreachable', 'offline'] as const) {
      const page = renderStatusPage(withUpstream({ offline: true, state }))
      expect(badge(page)).toContain('>offline mode</span>')
      expect(page).toContain('<title>pullcache (offline)</title>')
      expect(page).not.toContain('data-testid="unreachable-banner"')
    }
  })

  test('unknown (no contact lately, or no server to ask): not online either', () => {
    const page = renderStatusPage(withUpstream({ state: 'unknown', last_answer: null }))
    expect(badge(page)).toContain('>upstream not checked</span>')
    expect(page).not.toContain('>online</span>')
    expect(page).toContain('no answer from upstream yet')
  })

  test('the last failure message is escaped like every other upstream string', () => {
    const doc = busyReport()
    const page = renderStatusPage(
      withUpstream({ state: 'unreachable', last_failure: { at: FAILED_AT, message: HOSTILE_MESSAGE } }, doc),
    )
    expect(page).not.toMatch(/<img/i)
    expect(page).toContain('&lt;img src=x onerror=&quot;alert(&#39;err&#39;)&quot;&gt;')
  })
})
