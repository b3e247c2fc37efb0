// Tag patterns, as cache.pins and cache.tag_freshness_rules take them: a glob over "repo:tag"
// ("*:latest", "library/*:*"), a glob over the tag alone when it has no ':' ("latest", "v*"),
// or a regular expression over the tag in slashes ("/^v?\\d+\\.\\d+\\.\\d+$/"). `*` matches
// within one path component; `**` across '/'. Compiled once, when the config is read.

export function compileTagPattern(text: string): ((repo: string, tag: string) => boolean) | undefined {
  if (text.length > 1 && text.startsWith('/') && text.endsWith('/')) {
    try {
      const re = new RegExp(text.slice(1, -1))
      return (_repo, tag) => re.test(tag)
    } catch {
      return undefined
    }
  }
  if (text.length === 0) return undefined
  const colon = text.lastIndexOf(':')
  if (colon === -1) {
    const tagRe = globToRegExp(text)
    return (_repo, tag) => tagRe.test(tag)
  }
  const repoRe = globToRegExp(text.slice(0, colon))
  const tagRe = globToRegExp(text.slice(colon + 1))
  return (repo, tag) => repoRe.test(repo) && tagRe.test(tag)
}

function globToRegExp(glob: string): RegExp {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*'
      i++
    } else if (c === '*') re += '[^/]*'
    else if (c === '?') re += '[^/]'
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&')
  }
  return new RegExp(`^${re}$`)
}
