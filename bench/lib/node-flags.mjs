// The node flags pullcache runs with, read from where they are kept: `npm start` in the tree's
// package.json (the systemd unit, the Dockerfile and main.js's own first line carry the same,
// test/unit/node-flags.test.ts holds them together). The bench runs pullcache as users do.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

/** The flags between `node` and `dist/main.js` in the start script of the package at `root`. */
export function pullcacheNodeFlags(root) {
  const start = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts?.start ?? ''
  const m = /^node((?:\s+--\S+)*)\s+dist\/main\.js\b/.exec(start)
  if (!m) throw new Error(`bench: cannot read node's flags from npm start: ${start}`)
  return m[1].trim().split(/\s+/).filter(Boolean)
}
