// The reliability table as markdown: one row per check, one pass/fail column per server, then
// each check's figures side by side and what failed. RELIABILITY.md quotes it.
import type { CheckResult, Sizes } from './checks.js'
import type { ServerKind } from './servers.js'

const verdict = (r: CheckResult | undefined) =>
  r === undefined ? '–' : r.pass === null ? 'not run' : r.pass ? 'pass' : '**FAIL**'
const cell = (s: string | number | undefined) => String(s ?? '–').replaceAll('|', '\\|')

export function renderReport(results: readonly CheckResult[], opts: { full: boolean; sizes: Sizes }): string {
  const servers = [...new Set(results.map((r) => r.server))] as ServerKind[]
  const checks = [...new Set(results.map((r) => r.check))]
  const find = (check: string, server: ServerKind) =>
    results.find((r) => r.check === check && r.server === server)
  const out: string[] = []
  out.push(`Reliability checks, ${opts.full ? 'full' : 'bounded'} size (${new Date().toISOString()})`, '')
  out.push(`| check | ${servers.join(' | ')} |`, `|---|${servers.map(() => '---').join('|')}|`)
  for (const c of checks) out.push(`| ${c} | ${servers.map((s) => verdict(find(c, s))).join(' | ')} |`)
  out.push('', `Sizes: ${JSON.stringify(opts.sizes)}`)
  for (const c of checks) {
    out.push(
      '',
      `### ${c}`,
      '',
      `| figure | ${servers.join(' | ')} |`,
      `|---|${servers.map(() => '---').join('|')}|`,
    )
    const names = [...new Set(servers.flatMap((s) => Object.keys(find(c, s)?.figures ?? {})))]
    for (const n of names)
      out.push(`| ${cell(n)} | ${servers.map((s) => cell(find(c, s)?.figures[n])).join(' | ')} |`)
    for (const s of servers) {
      const failures = find(c, s)?.failures ?? []
      if (failures.length > 0)
        out.push('', `${s} failures:`, ...failures.map((f) => `- ${f.replaceAll('\n', ' ')}`))
    }
  }
  return `${out.join('\n')}\n`
}
