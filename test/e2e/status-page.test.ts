// The status page in a real browser (Debian's chromium, driven by playwright-core): the numbers it
// shows are the stats document's, nothing spills sideways on a phone, and hostile strings stay
// text. Screenshots land in test-results/ for a person to look at.
import { randomBytes } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { type BrowserContext, chromium, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { formatCount, formatPercent } from '../../src/http/status-page-numbers.js'
import { renderStatusPage } from '../../src/http/status-page-render.js'
import type { StatsReport } from '../../src/mirror/stats-report.js'
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream.js'
import { startMirror, type TestMirror } from '../support/start-mirror.js'
import { busyReport, emptyReport, HOSTILE_MESSAGE, HOSTILE_REPO } from '../support/stats-fixture.js'
import { makeTempDir, removeDir, requireBinary } from './processes.js'

const SHOTS = resolve('test-results')
const ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
].join(', ')
// An upstream error message that is markup: it must reach the page as text.
const UPSTREAM_INSULT = '<b id="injected">bold</b> & <script>document.title="pwned"</script>'

const VIEWPORTS = {
  desktop: { viewport: { width: 1280, height: 900 } },
  phone: {
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  },
} as const
type ViewportName = keyof typeof VIEWPORTS

let work: string
const contexts = new Map<ViewportName, BrowserContext>()

async function browser(name: ViewportName): Promise<BrowserContext> {
  const open = contexts.get(name)
  if (open) return open
  // Fails, never skips, when chromium is missing: the message names the apt-get line.
  const executablePath = requireBinary('chromium', ['/usr/bin/chromium'])
  const context = await chromium.launchPersistentContext(join(work, `profile-${name}`), {
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    colorScheme: 'light',
    ...VIEWPORTS[name],
  })
  contexts.set(name, context)
  return context
}

/** The page overflows sideways when the document is wider than the viewport. */
async function horizontalOverflow(page: Page): Promise<{ scrollWidth: number; innerWidth: number }> {
  return page.evaluate(() => {
    // Runs in the page; the test's tsconfig has no DOM types.
    const w = globalThis as unknown as {
      document: { scrollingElement: { scrollWidth: number } | null }
      innerWidth: number
    }
    return { scrollWidth: w.document.scrollingElement?.scrollWidth ?? 0, innerWidth: w.innerWidth }
  })
}

async function text(page: Page, testId: string): Promise<string> {
  return ((await page.getByTestId(testId).textContent()) ?? '').replace(/\s+/g, ' ').trim()
}

beforeAll(async () => {
  work = await makeTempDir('status-page')
  await mkdir(SHOTS, { recursive: true })
})

afterAll(async () => {
  for (const context of contexts.values()) await context.close()
  await removeDir(work)
})

describe('the status page of a running pullcache', () => {
  let up: FakeUpstream
  let mirror: TestMirror

  beforeAll(async () => {
    up = await startFakeUpstream({ rateLimit: { limit: 100, remaining: 97, window: 21_600 } })
    mirror = await startMirror({ upstream: up.url })
    const cache = (res: { headers: Record<string, unknown> }) => res.headers['x-pullcache-cache']

    // alpine: the tag and its layers once cold (miss), then twice warm (hit).
    const alpine = up.addImage('library/alpine', '3.20', { layers: 2, layerBytes: 300_000 })
    for (const expected of ['miss', 'hit', 'hit']) {
      const m = await mirror.get('/v2/library/alpine/manifests/3.20', { accept: ACCEPT })
      expect(cache(m)).toBe(expected)
      for (const digest of [alpine.configDigest, ...alpine.layers.map((l) => l.digest)]) {
        const b = await mirror.get(`/v2/library/alpine/blobs/${digest}`)
        expect(cache(b)).toBe(expected)
      }
    }
    // busybox: one miss, then served stale while upstream fails.
    up.addImage('library/busybox', 'latest', { layers: 1, layerBytes: 50_000 })
    const tag = '/v2/library/busybox/manifests/latest'
    expect(cache(await mirror.get(tag, { accept: ACCEPT }))).toBe('miss')
    mirror.server.mirror.setTagFreshness(0)
    up.fault({ method: 'HEAD', path: tag }, { kind: 'status', status: 500 })
    expect(cache(await mirror.get(tag, { accept: ACCEPT }))).toBe('stale')
    up.clearFaults()
    mirror.server.mirror.setTagFreshness(60_000)
    // A tag list upstream refuses with a message that is markup (only GET bodies are read).
    const tags = '/v2/library/busybox/tags/list'
    const body = JSON.stringify({ errors: [{ code: 'UNKNOWN', message: UPSTREAM_INSULT }] })
    up.fault({ method: 'GET', path: tags }, { kind: 'status', status: 500, body })
    expect((await mirror.get(tags)).status).toBeGreaterThanOrEqual(500)
    up.clearFaults()
    // A blob nobody has: an error.
    const gone = await mirror.get(`/v2/library/busybox/blobs/sha256:${randomBytes(32).toString('hex')}`)
    expect(gone.status).toBe(404)
  })

  afterAll(async () => {
    await mirror?.close()
    await up?.close()
  })

  async function stats(): Promise<StatsReport> {
    return JSON.parse((await mirror.get('/_pullcache/stats')).body.toString()) as StatsReport
  }

  for (const name of ['desktop', 'phone'] as const) {
    test(`${name}: the numbers are the stats document's, and nothing overflows`, async () => {
      const page = await (await browser(name)).newPage()
      try {
        const response = await page.goto(`${mirror.url}/`)
        expect(response?.status()).toBe(200)
        expect(response?.headers()['content-type']).toBe('text/html; charset=utf-8')
        const doc = await stats()

        expect(doc.overall.hits).toBeGreaterThan(0)
        expect(doc.overall.misses).toBeGreaterThan(0)
        expect(doc.overall.stale).toBe(1)
        expect(await text(page, 'hit-rate')).toBe(formatPercent(doc.overall.hit_rate))
        expect(await text(page, 'pulls-avoided')).toBe(formatCount(doc.overall.pulls_avoided))
        expect(doc.overall.pulls_avoided).toBeGreaterThan(0)
        const top = doc.top_repositories[0]!
        expect(top.repo).toBe('library/alpine')
        const firstRow = page.getByTestId('repos').locator('tbody tr').first()
        expect(await firstRow.locator('td').first().textContent()).toBe(top.repo)
        expect(await firstRow.locator('td').nth(2).textContent()).toContain(formatPercent(top.hit_rate))
        const rl = doc.upstream.rate_limit!
        expect(rl.limit).toBe(100)
        expect(await text(page, 'rate-limit')).toBe(
          `${formatCount(rl.remaining)} of ${formatCount(rl.limit)} per 6 h`,
        )
        expect(await text(page, 'budget')).toMatch(/^on disk; no budget/)
        expect(await text(page, 'version')).toBe(doc.version)
        // The page and the document each read the clock: the same unit, not the same second.
        expect(await text(page, 'uptime')).toMatch(/^\d+ (s|min)$/)
        expect(await page.getByTestId('offline').count()).toBe(0)

        // The upstream's markup is shown as text, and did not run.
        expect(await page.title()).toBe('pullcache')
        expect(await page.locator('#injected').count()).toBe(0)
        expect(await page.getByTestId('errors').textContent()).toContain(UPSTREAM_INSULT)

        const { scrollWidth, innerWidth } = await horizontalOverflow(page)
        expect(scrollWidth).toBeLessThanOrEqual(innerWidth)
        await page.screenshot({ path: join(SHOTS, `status-page-${name}.png`), fullPage: true })
      } finally {
        await page.close()
      }
    })
  }

  test('the same page at /_pullcache/, with an offline badge once offline', async () => {
    mirror.server.mirror.offline = true
    const page = await (await browser('phone')).newPage()
    try {
      await page.goto(`${mirror.url}/_pullcache/`)
      expect(await text(page, 'offline')).toBe('offline mode')
      expect(await page.title()).toBe('pullcache (offline)')
      await page.screenshot({ path: join(SHOTS, 'status-page-phone-offline.png'), fullPage: false })
    } finally {
      mirror.server.mirror.offline = false
      await page.close()
    }
  })
})

describe('the status page of made-up documents', () => {
  for (const name of ['desktop', 'phone'] as const) {
    test(`${name}: a busy day with hostile names fits and stays text`, async () => {
      const doc = busyReport()
      const page = await (await browser(name)).newPage()
      try {
        await page.setContent(renderStatusPage(doc))
        expect(await page.locator('script').count()).toBe(0)
        expect(await page.locator('img').count()).toBe(0)
        const repos = await page.getByTestId('repos').textContent()
        expect(repos).toContain(HOSTILE_REPO)
        expect(await page.getByTestId('errors').textContent()).toContain(HOSTILE_MESSAGE)
        expect(await page.getByTestId('upstream-share').count()).toBe(doc.upstreams.length)
        expect(await text(page, 'hit-rate')).toBe(formatPercent(doc.overall.hit_rate))
        expect(await text(page, 'pulls-avoided')).toBe('1,234')
        // The chart has a bar group per hour with traffic, and a hit-rate line.
        expect(await page.locator('svg g').count()).toBe(doc.hourly.length)
        expect(await page.locator('svg path.rate').count()).toBe(1)
        const { scrollWidth, innerWidth } = await horizontalOverflow(page)
        expect(scrollWidth).toBeLessThanOrEqual(innerWidth)
        await page.screenshot({ path: join(SHOTS, `status-page-busy-${name}.png`), fullPage: true })
        await page.emulateMedia({ colorScheme: 'dark' })
        await page.screenshot({ path: join(SHOTS, `status-page-busy-${name}-dark.png`), fullPage: true })
      } finally {
        await page.close()
      }
    })
  }

  test('phone: an empty store', async () => {
    const page = await (await browser('phone')).newPage()
    try {
      await page.setContent(renderStatusPage(emptyReport()))
      expect(await text(page, 'hit-rate')).toBe('–')
      expect(await page.getByTestId('no-repos').count()).toBe(1)
      expect(await page.getByText('No requests in the last 24 hours').count()).toBeGreaterThan(0)
      const { scrollWidth, innerWidth } = await horizontalOverflow(page)
      expect(scrollWidth).toBeLessThanOrEqual(innerWidth)
      await page.screenshot({ path: join(SHOTS, 'status-page-empty-phone.png'), fullPage: true })
    } finally {
      await page.close()
    }
  })
})
