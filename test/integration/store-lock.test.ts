import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { runCli } from '../support/run-cli.js'
import { startMirror } from '../support/start-mirror.js'

describe('one server per store', () => {
  test('a second pullcache on the same data dir refuses to start instead of emptying tmp/ under the first', async () => {
    const mirror = await startMirror({ upstream: 'http://127.0.0.1:1' })
    try {
      expect(existsSync(join(mirror.dataDir, 'pullcache.pid'))).toBe(true)
      const second = await runCli(['serve', '--data-dir', mirror.dataDir, '--listen', '127.0.0.1:0'], {
        timeoutMs: 20_000,
      })
      expect(second).toMatchObject({ code: 1 })
      expect(second.stderr).toContain(`another pullcache (pid ${process.pid})`)
    } finally {
      await mirror.close({ wipe: false })
    }
    expect(existsSync(join(mirror.dataDir, 'pullcache.pid'))).toBe(false)
  })

  test('a pid file left by a process that is gone is taken over', async () => {
    const first = await startMirror({ upstream: 'http://127.0.0.1:1' })
    await first.close({ wipe: false })
    // No process has pid 2^22 + 1 here (above Linux's default pid_max).
    writeFileSync(join(first.dataDir, 'pullcache.pid'), '4194305\n')
    const again = await startMirror({ upstream: 'http://127.0.0.1:1', dataDir: first.dataDir })
    expect((await again.get('/v2/')).status).toBe(200)
    await again.close()
  })
})
