// Summarises a V8 .cpuprofile (from `bash bench/run --profile DIR`, or `node --cpu-prof`): where the
// samples went, by function (self time) and by file, top N.
//
//   node bench/profile-summary.mjs FILE.cpuprofile [N] [--after SECONDS] [--before SECONDS] [--split]
//
// --split also sorts the busy samples into the parts of a cold blob GET (upstream body reading,
// hashing, temp-file writes, follower reads, client writes, GC, other) by the nearest frame of
// the sample's stack that says which part it is (see SPLIT below).
//
// --after/--before keep only the samples taken in that window (seconds from the profile's start),
// e.g. to leave out the process's start-up and its idle time before the measured requests.
import { readFileSync } from 'node:fs'

const positional = []
let after = 0
let before = Number.POSITIVE_INFINITY
let split = false
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i]
  if (a === '--after') after = Number(process.argv[++i])
  else if (a === '--before') before = Number(process.argv[++i])
  else if (a === '--split') split = true
  else positional.push(a)
}
const [file, topArg] = positional
if (!file) {
  process.stderr.write('usage: node bench/profile-summary.mjs FILE.cpuprofile [N] [--after S] [--before S]\n')
  process.exit(2)
}
const top = Number(topArg ?? 25)
const profile = JSON.parse(readFileSync(file, 'utf8'))
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const selfCount = new Map()
let at = 0
let first = Number.POSITIVE_INFINITY
let last = 0
for (let i = 0; i < profile.samples.length; i++) {
  at += profile.timeDeltas[i] ?? 0
  const seconds = at / 1e6
  if (seconds < after || seconds > before) continue
  first = Math.min(first, at)
  last = Math.max(last, at)
  const id = profile.samples[i]
  selfCount.set(id, (selfCount.get(id) ?? 0) + 1)
}
const total = [...selfCount.values()].reduce((a, b) => a + b, 0)
if (total === 0) {
  process.stderr.write('no samples in that window\n')
  process.exit(1)
}
const span = last - first
// Sample intervals in µs: the time each sample stands for.
const micros = span / Math.max(total, 1)

const shortUrl = (url) =>
  url
    .replace(/^file:\/\//, '')
    .replace(/.*\/node_modules\//, 'node_modules/')
    .replace(/.*\/dist\//, 'dist/')
const label = (n) => {
  const f = n.callFrame
  const name = f.functionName || '(anonymous)'
  return f.url ? `${name} ${shortUrl(f.url)}:${f.lineNumber + 1}` : name
}

const byFunction = new Map()
const byFile = new Map()
for (const [id, count] of selfCount) {
  const n = byId.get(id)
  const fn = label(n)
  byFunction.set(fn, (byFunction.get(fn) ?? 0) + count)
  const url = n.callFrame.url ? shortUrl(n.callFrame.url) : `(${n.callFrame.functionName || 'native'})`
  byFile.set(url, (byFile.get(url) ?? 0) + count)
}
const idle = [...selfCount].reduce(
  (a, [id, c]) => (byId.get(id).callFrame.functionName === '(idle)' ? a + c : a),
  0,
)
const pct = (c) => `${((100 * c) / total).toFixed(1).padStart(5)}%`
const out = []
out.push(
  `${file}: ${total} samples over ${(span / 1e6).toFixed(2)} s (from ${(first / 1e6).toFixed(2)} s) ` +
    `(${(micros / 1000).toFixed(2)} ms each); busy ${pct(total - idle)}`,
  '',
  'self time by function:',
)
for (const [k, v] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) out.push(`  ${pct(v)}  ${k}`)
out.push('', 'self time by file:')
for (const [k, v] of [...byFile].sort((a, b) => b[1] - a[1]).slice(0, top)) out.push(`  ${pct(v)}  ${k}`)
if (split) out.push('', ...splitSummary())
process.stdout.write(`${out.join('\n')}\n`)

/**
 * Which part of a cold GET a sample belongs to: the first frame, from the sample's own function
 * up to the root, that matches one of these (name and file of the frame). Native frames without a
 * file (writeBuffer, read) are told apart by the JavaScript frame that called them.
 */
function splitSummary() {
  const SPLIT = [
    ['GC', /^\(garbage collector\)/],
    ['hashing', /^(update|digest) node:internal\/crypto\/hash/],
    ['temp-file writes', /^(writev|write) node:internal\/fs\/promises|blob-store\.js|^writeAll /],
    [
      'follower reads',
      /^read node:internal\/fs\/promises|blob-fill\.js.*(readWhenReady|read)|^written .*blob-route/,
    ],
    [
      'client writes',
      /_http_outgoing|node:net|stream_base_commons.*(writeGeneric|writevGeneric|createWriteWrap)|send-bytes\.js|^(writeBuffer|writeBuffers)$/,
    ],
    [
      'upstream body reading',
      /undici|node:internal\/streams\/readable|onStreamRead|blob-fill\.js|^(readStart|readStop)$/,
    ],
  ]
  const parent = new Map()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const frame = (n) => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url ?? ''}`
  const parts = new Map()
  let busy = 0
  for (const [id, count] of selfCount) {
    const leaf = byId.get(id)
    if (leaf.callFrame.functionName === '(idle)') continue
    busy += count
    let part = 'other'
    for (let n = leaf; n; n = byId.get(parent.get(n.id))) {
      const hit = SPLIT.find(([, re]) => re.test(frame(n)))
      if (hit) {
        part = hit[0]
        break
      }
    }
    parts.set(part, (parts.get(part) ?? 0) + count)
  }
  const lines = ['main thread, busy samples by part of the GET (share of busy; seconds):']
  for (const [k, v] of [...parts].sort((a, b) => b[1] - a[1])) {
    lines.push(
      `  ${((100 * v) / busy).toFixed(1).padStart(5)}%  ${((v * micros) / 1e6).toFixed(2).padStart(6)} s  ${k}`,
    )
  }
  return lines
}
