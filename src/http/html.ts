// Safe HTML for the status page. Every string from the stats document passes through
// escapeHtml (the `html` template does it by default): repository names and upstream error
// messages come from clients and from the internet. Markup is only ever made by `html`, so a
// plain string can never be mistaken for it.

/** Text safe to place in HTML text and in double- or single-quoted attribute values. */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (ch) => ESCAPES[ch]!)
}

const ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
}

/** Markup that is already safe; only `html` makes one, so a plain string is always escaped. */
export interface Html {
  readonly __html: string
}

type Fragment = Html | string | number | null | undefined | false | readonly Fragment[]

/** Template tag: the literal parts are markup, every interpolated value is escaped. */
export function html(strings: TemplateStringsArray, ...values: Fragment[]): Html {
  let out = strings[0]!
  for (let i = 0; i < values.length; i++) out += fragment(values[i]) + strings[i + 1]!
  return { __html: out }
}

function fragment(value: Fragment | undefined): string {
  if (value === null || value === undefined || value === false) return ''
  if (typeof value === 'string') return escapeHtml(value)
  if (typeof value === 'number') return escapeHtml(String(value))
  if (Array.isArray(value)) return value.map(fragment).join('')
  return (value as Html).__html
}
