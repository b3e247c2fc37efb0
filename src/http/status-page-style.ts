// The status page's stylesheet, inlined in the page so it loads nothing from elsewhere (the
// Content-Security-Policy allows inline styles only). Light and dark follow the system; the
// layout reflows from a phone to a wide screen without a script.

export const STYLE = `
:root {
  --bg: #f4f5f7; --panel: #fff; --ink: #14171c; --muted: #667085; --line: #e3e6eb;
  --hit: #12a17a; --miss: #f0a53a; --err: #e5484d; --rate: #3b4fd8; --accent: #0f7b60;
  --warn: #d97706;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0e1014; --panel: #171a20; --ink: #e6e8eb; --muted: #9aa3af; --line: #2a2f38;
    --hit: #23b48c; --miss: #e9a13b; --err: #f2555a; --rate: #8b9bff; --accent: #3fd0a5;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-variant-numeric: tabular-nums;
}
a { color: inherit; }
.wrap { max-width: 1080px; margin: 0 auto; padding: 0 16px; }
.top { background: var(--panel); border-bottom: 1px solid var(--line); }
.top-row { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; min-height: 56px; padding-top: 8px; padding-bottom: 8px; }
h1 { font-size: 20px; margin: 0; letter-spacing: -0.01em; display: flex; align-items: center; gap: 8px; }
.logo { color: var(--accent); font-size: 16px; }
.upstream-url { color: var(--muted); margin-left: auto; font-size: 13px; overflow-wrap: anywhere; }
.badge { font-size: 12px; font-weight: 600; text-transform: uppercase; letter-spacing: 0.06em; padding: 2px 8px; border-radius: 999px; }
.badge.online { color: var(--accent); background: color-mix(in srgb, var(--accent) 12%, transparent); }
.badge.offline { color: #fff; background: var(--warn); }
.badge.unreachable { color: #fff; background: var(--err); }
.badge.unknown { color: var(--muted); border: 1px solid currentColor; }
.banner { margin: 0; padding: 10px 14px; border-radius: 10px; border: 1px solid color-mix(in srgb, var(--warn) 45%, transparent); background: color-mix(in srgb, var(--warn) 12%, var(--panel)); font-size: 14px; }
main.wrap { padding-top: 16px; padding-bottom: 8px; display: grid; gap: 16px; }
.cards { display: grid; gap: 12px; grid-template-columns: repeat(auto-fit, minmax(min(100%, 220px), 1fr)); }
.card, .panel { background: var(--panel); border: 1px solid var(--line); border-radius: 12px; padding: 14px 16px; min-width: 0; }
.card.accent .big { color: var(--accent); }
.label { color: var(--muted); font-size: 13px; font-weight: 500; }
.label.gap { margin-top: 14px; }
.big { font-size: 34px; font-weight: 700; line-height: 1.15; letter-spacing: -0.02em; margin: 2px 0; overflow-wrap: anywhere; }
.big.small { font-size: 24px; }
.big .of { font-size: 15px; font-weight: 500; color: var(--muted); letter-spacing: 0; }
.note { color: var(--muted); font-size: 13px; }
.note.ok { color: var(--accent); margin: 4px 0 0; }
.note.url { margin-top: 12px; overflow-wrap: anywhere; }
h2 { font-size: 15px; margin: 0 0 10px; }
.two { display: grid; gap: 16px; grid-template-columns: repeat(auto-fit, minmax(min(100%, 340px), 1fr)); }
.stack { display: flex; flex-direction: column; gap: 16px; min-width: 0; }
.stack > :last-child { flex: 1; }
.chart { margin: 0; }
.plot { display: grid; grid-template-columns: auto 1fr auto; column-gap: 6px; row-gap: 4px; }
.axis { display: flex; flex-direction: column; justify-content: space-between; font-size: 11px; color: var(--muted); min-width: 2ch; }
.axis.left { text-align: right; }
.canvas { position: relative; height: 190px; min-width: 0; }
.canvas svg { display: block; width: 100%; height: 100%; overflow: visible; }
.grid { stroke: var(--line); stroke-width: 1; vector-effect: non-scaling-stroke; stroke-dasharray: 3 3; }
.base { stroke: var(--muted); stroke-width: 1; vector-effect: non-scaling-stroke; }
.b-hit { fill: var(--hit); } .b-miss { fill: var(--miss); } .b-err { fill: var(--err); }
g:hover rect { opacity: 0.8; }
.rate, .halo { fill: none; vector-effect: non-scaling-stroke; stroke-linejoin: round; stroke-linecap: round; }
.rate { stroke: var(--rate); stroke-width: 2.5; }
.halo { stroke: var(--panel); stroke-width: 6; }
.empty { position: absolute; inset: 0; display: grid; place-items: center; color: var(--muted); font-size: 14px; }
.xaxis { grid-column: 2; display: flex; justify-content: space-between; font-size: 11px; color: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 12px; color: var(--muted); margin-top: 10px; }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; }
.sw.hit { background: var(--hit); } .sw.miss { background: var(--miss); } .sw.err { background: var(--err); }
.sw.line { height: 3px; width: 14px; background: var(--rate); border-radius: 2px; }
.kinds { display: grid; gap: 10px; }
.kind { display: grid; grid-template-columns: 6.5em 1fr 4.2em 7.5em; align-items: center; gap: 10px; min-width: 0; }
.kind b { text-align: right; }
.kind .note { text-align: right; }
/* By upstream: hosts are longer than kind names, and the note carries three facts. */
.shares .kind { grid-template-columns: minmax(6.5em, 16em) 1fr 4.2em 18em; }
.shares .kind-name { overflow-wrap: anywhere; }
.meter.thin { height: 6px; margin: 0; display: block; }
.meter.thin > span { display: block; height: 100%; background: var(--hit); border-radius: 999px; }
.counts { display: flex; flex-wrap: wrap; gap: 4px 16px; margin-top: 12px; color: var(--muted); font-size: 13px; }
.counts b { color: var(--ink); }
.meter { height: 10px; border-radius: 999px; background: var(--line); overflow: hidden; margin: 10px 0 6px; }
.meter > div { height: 100%; background: var(--hit); border-radius: 999px; }
.meter.high > div { background: var(--warn); } .meter.full > div { background: var(--err); }
.errors { list-style: none; margin: 6px 0 0; padding: 0; display: grid; gap: 8px; }
.errors li { border-left: 3px solid var(--err); padding: 2px 0 2px 10px; min-width: 0; }
.err-head { display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap; font-size: 12px; }
.kind-tag { font-weight: 700; color: var(--err); letter-spacing: 0.03em; }
.status { font-weight: 600; }
.err-head time { color: var(--muted); margin-left: auto; }
.err-msg { font-size: 13px; overflow-wrap: anywhere; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.repos { width: 100%; border-collapse: collapse; font-size: 14px; }
.repos th { text-align: left; color: var(--muted); font-weight: 500; font-size: 12px; padding: 0 8px 6px; border-bottom: 1px solid var(--line); }
.repos td { padding: 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
.repos tr:last-child td { border-bottom: 0; }
.repos th:first-child, .repos td:first-child { padding-left: 0; }
.repos th:last-child, .repos td:last-child { padding-right: 0; }
.repo { overflow-wrap: anywhere; word-break: break-word; font-weight: 500; }
.num { text-align: right; white-space: nowrap; }
.repos th.num { text-align: right; }
.rate .pct { display: block; }
.mini { display: block; height: 4px; width: 56px; margin: 3px 0 0 auto; background: var(--line); border-radius: 2px; overflow: hidden; }
.mini > span { display: block; height: 100%; background: var(--hit); }
.foot { display: flex; flex-wrap: wrap; gap: 4px 18px; color: var(--muted); font-size: 12px; padding-top: 8px; padding-bottom: 24px; }
.foot b { color: var(--ink); font-weight: 600; }
@media (max-width: 520px) {
  body { font-size: 14px; }
  .wrap { padding: 0 12px; }
  main { gap: 12px; padding-top: 12px; }
  .cards { grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 10px; }
  .card, .panel { padding: 12px; border-radius: 10px; }
  .big { font-size: 26px; }
  .big.small { font-size: 20px; }
  .canvas { height: 150px; }
  .repos { font-size: 13px; }
  .repos td, .repos th { padding-left: 4px; padding-right: 4px; }
  .mini { width: 40px; }
  .kind { grid-template-columns: 5.5em 1fr 3.8em; }
  .kind .note { grid-column: 1 / -1; text-align: left; margin-top: -8px; }
  .shares .kind { grid-template-columns: minmax(5.5em, 1fr) 1fr 3.8em; }
  .upstream-url { margin-left: 0; width: 100%; }
  .cluster .wide { display: none; }
}
`
