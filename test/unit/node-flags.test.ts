// pullcache runs with node flags (why: systemd/pullcache.service), and is started four ways: npm
// start, the systemd unit, the container image and dist/main.js as a command. All four must pass
// the same flags, and the flags must do here what they are there for.
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { describe, expect, test } from 'vitest'

const read = (path: string) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8')

/** The `--` flags between node and main.js in one command line. */
function flagsIn(line: string): string[] {
  const m = /node((?:[\s",]+--[^\s",]+)*)[\s",]+[^\s",]*dist\/main\.js/.exec(line)
  if (!m) throw new Error(`no node … dist/main.js in: ${line}`)
  return [...m[1]!.matchAll(/--[^\s",]+/g)].map((f) => f[0])
}

const npmStart = flagsIn(JSON.parse(read('package.json')).scripts.start)

describe('node flags', () => {
  test('npm start, the systemd unit, the image and the command pass the same ones', () => {
    expect(npmStart).toContain('--max-semi-space-size=2')
    const unit = read('systemd/pullcache.service')
      .split('\n')
      .find((l) => l.startsWith('ExecStart='))!
    const image = read('Dockerfile')
      .split('\n')
      .find((l) => l.startsWith('ENTRYPOINT'))!
    // The command: env -S splits the rest of the line into node's arguments.
    const shebang = read('src/main.ts').split('\n')[0]!
    expect(shebang.startsWith('#!/usr/bin/env -S node')).toBe(true)
    expect(flagsIn(unit)).toEqual(npmStart)
    expect(flagsIn(image)).toEqual(npmStart)
    expect(flagsIn(`${shebang} dist/main.js`)).toEqual(npmStart)
  })

  test('this node takes them, and the young generation stays at 2 MiB a half', () => {
    // Garbage enough to grow the young generation to its most (32 MiB without the flag).
    const script =
      'let k = []; for (let i = 0; i < 1e6; i++) { k.push({ i, s: "x" + i }); if (k.length > 5e4) k = [] }' +
      'const s = require("v8").getHeapSpaceStatistics().find((s) => s.space_name === "new_space");' +
      'process.stdout.write(String(s.space_size))'
    const run = (flags: string[]) => {
      const r = spawnSync(process.execPath, [...flags, '-e', script], { encoding: 'utf8' })
      expect(r.status, r.stderr).toBe(0)
      return Number(r.stdout)
    }
    expect(run(npmStart)).toBeLessThanOrEqual(4 * 1024 * 1024)
    expect(run([])).toBeGreaterThan(4 * 1024 * 1024)
  })

  test("undici's WebAssembly parser is never optimised: no compiler memory spike", () => {
    // 50 requests to a loopback server make the parser hot; then wait up to WAIT ms for V8's
    // optimising compile, which shows as its malloc peak (36 MB here without the flag, within
    // 0.1 s on an idle machine; the wait without the flag is longer for a loaded one).
    const script = `
      const v8 = require('node:v8'), http = require('node:http'), { request } = require('undici')
      const peak = () => v8.getHeapStatistics().peak_malloced_memory
      const server = http.createServer((q, s) => s.end('hi')).listen(0, '127.0.0.1', async () => {
        const url = 'http://127.0.0.1:' + server.address().port + '/'
        for (let i = 0; i < 50; i++) await (await request(url)).body.text()
        const until = Date.now() + Number(process.env.WAIT)
        while (Date.now() < until && peak() < 16e6) await new Promise((r) => setTimeout(r, 50))
        process.stdout.write(String(peak()))
        server.close()
      })`
    // The child resolves undici from the project's node_modules.
    const root = new URL('../../', import.meta.url)
    const peakOf = (flags: string[], waitMs: number) => {
      const r = spawnSync(process.execPath, [...flags, '-e', script], {
        encoding: 'utf8',
        cwd: root,
        env: { ...process.env, WAIT: String(waitMs) },
        timeout: 30_000,
      })
      expect(r.status, r.stderr).toBe(0)
      return Number(r.stdout)
    }
    expect(peakOf(npmStart, 2000)).toBeLessThan(16e6)
    expect(peakOf([], 15_000)).toBeGreaterThanOrEqual(16e6)
  })
})
