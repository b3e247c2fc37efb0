import { execFile } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { describe, expect, test } from 'vitest'
import { startMirror } from '../support/start-mirror.js'

const run = promisify(execFile)
const CLI = join(import.meta.dirname, '../../dist/main.js')

describe('one server per store', () => {
  test('a second pullcache on the same data dir refuses to start instead of emptying tmp/ under the first', async () => {
    const mirror = await startMirror({ upstream: 'http://127.0.0.1:1' })
    try {
      expect(existsSync(join(mirror.dataDir, 'pullcache.pid'))).toBe(true)
      const second = run('node', [CLI, 'serve', '--data-dir', mirror.dataDir, '--listen', '127.0.0.1:0'], {
        timeout: 20_000,
      })
      await expect(second).rejects.toMatchObject({ code: 1 })
      const err = await second.catch((e: { stderr: string }) => e.stderr)
      expect(err).toContain(`another pullcache (pid ${process.pid})`)
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
