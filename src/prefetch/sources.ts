// Where prefetch finds image references: a plain list (one per line, # comments), a Compose
// file (each service's `image:`, with Compose's ${VAR} interpolation from the environment and a
// .env file beside it), and Kubernetes manifests (every container, init container and ephemeral
// container image of Pods and of the workloads that template them). Each reference keeps where
// it came from, so a bad one can be reported by file and place.

import { parseAllDocuments, parseDocument } from 'yaml'

export interface FoundReference {
  /** The reference as written (after interpolation, for Compose). */
  text: string
  /** Where it was found: "list.txt:3", "compose.yml: service web", ... */
  source: string
  /** Set when the reference could not even be formed (a required variable was unset). */
  error?: string
}

/** A file that cannot be read as what it was given as. */
export class SourceError extends Error {
  readonly code = 'SOURCE_INVALID'
  constructor(message: string) {
    super(message)
    this.name = 'SourceError'
  }
}

// `<<` merge keys are common in Compose files; aliases are capped by the library's default.
const YAML_OPTIONS = { merge: true, prettyErrors: true } as const

export function referencesFromList(text: string, file: string): FoundReference[] {
  const found: FoundReference[] = []
  text.split(/\r?\n/).forEach((line, i) => {
    // '#' cannot occur in a reference, so anything after one is a comment.
    const hash = line.indexOf('#')
    const ref = (hash === -1 ? line : line.slice(0, hash)).trim()
    if (ref !== '') found.push({ text: ref, source: `${file}:${i + 1}` })
  })
  return found
}

export interface ComposeResult {
  found: FoundReference[]
  /** Services with nothing to pull, e.g. built locally. */
  skipped: string[]
}

/**
 * `env` is what Compose would interpolate from: the .env file's variables, overridden by the
 * environment (see parseDotEnv).
 */
export function referencesFromCompose(
  text: string,
  file: string,
  env: Record<string, string | undefined>,
): ComposeResult {
  const doc = parseDocument(text, YAML_OPTIONS)
  if (doc.errors.length > 0) throw new SourceError(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`)
  const root: unknown = doc.toJS()
  if (!isObject(root) || !isObject(root.services)) {
    throw new SourceError(`${file}: not a Compose file (no services: mapping)`)
  }
  const result: ComposeResult = { found: [], skipped: [] }
  for (const [name, service] of Object.entries(root.services)) {
    const source = `${file}: service ${name}`
    if (!isObject(service)) continue
    // An image that is built here is named, not pulled (docker compose pull --ignore-buildable).
    if (service.build !== undefined) {
      result.skipped.push(`${source}: built locally`)
      continue
    }
    if (service.image === undefined) {
      result.skipped.push(`${source}: no image`)
      continue
    }
    if (typeof service.image !== 'string') {
      result.found.push({ text: String(service.image), source, error: 'image: is not a string' })
      continue
    }
    try {
      result.found.push({ text: interpolate(service.image, env), source })
    } catch (err) {
      result.found.push({ text: service.image, source, error: (err as Error).message })
    }
  }
  return result
}

/** Compose's variable syntax: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$. */
export function interpolate(text: string, env: Record<string, string | undefined>): string {
  return text.replace(
    /\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))/g,
    (match, dollar, braced, op, arg, bare) => {
      if (dollar !== undefined) return '$'
      const name = (braced ?? bare) as string | undefined
      if (name === undefined) return match
      const value = env[name]
      const unset = value === undefined
      const empty = unset || value === ''
      switch (op as string | undefined) {
        case ':-':
          return empty ? (arg as string) : value!
        case '-':
          return unset ? (arg as string) : value
        case ':?':
        case '?':
          if (op === ':?' ? empty : unset)
            throw new Error(`variable ${name} is required: ${arg || 'not set'}`)
          return value!
        case ':+':
          return empty ? '' : (arg as string)
        case '+':
          return unset ? '' : (arg as string)
        default:
          // Compose warns and uses an empty string; the reference then fails to parse and says so.
          return value ?? ''
      }
    },
  )
}

/** A .env file as Compose reads it: KEY=VALUE lines, optional quotes, # comments. */
export function parseDotEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$/.exec(line)
    if (!m) continue
    let value = m[2]!
    const quote = value[0]
    if ((quote === '"' || quote === "'") && value.length >= 2 && value.endsWith(quote)) {
      value = value.slice(1, -1)
    } else {
      value = value.replace(/\s+#.*$/, '')
    }
    out[m[1]!] = value
  }
  return out
}

/** Kinds whose pod spec is at spec.template.spec. */
const TEMPLATED = new Set([
  'Deployment',
  'StatefulSet',
  'DaemonSet',
  'ReplicaSet',
  'ReplicationController',
  'Job',
])
const CONTAINER_LISTS = ['initContainers', 'containers', 'ephemeralContainers'] as const

export function referencesFromKubernetes(text: string, file: string): FoundReference[] {
  const docs = parseAllDocuments(text, YAML_OPTIONS)
  if (!Array.isArray(docs)) return [] // an empty stream
  const found: FoundReference[] = []
  docs.forEach((doc, i) => {
    if (doc.errors.length > 0) {
      throw new SourceError(`${file} (document ${i + 1}): ${doc.errors.map((e) => e.message).join('; ')}`)
    }
    collect(doc.toJS(), `${file}`, found)
  })
  return found
}

function collect(object: unknown, file: string, found: FoundReference[]): void {
  if (!isObject(object) || typeof object.kind !== 'string') return
  const kind = object.kind
  if (kind === 'List' || (kind.endsWith('List') && Array.isArray(object.items))) {
    for (const item of Array.isArray(object.items) ? object.items : []) collect(item, file, found)
    return
  }
  const name =
    isObject(object.metadata) && typeof object.metadata.name === 'string' ? object.metadata.name : '?'
  let podSpec: unknown
  if (kind === 'Pod') podSpec = object.spec
  else if (TEMPLATED.has(kind)) podSpec = dig(object, 'spec', 'template', 'spec')
  else if (kind === 'CronJob') podSpec = dig(object, 'spec', 'jobTemplate', 'spec', 'template', 'spec')
  else if (kind === 'PodTemplate') podSpec = dig(object, 'template', 'spec')
  if (!isObject(podSpec)) return
  for (const list of CONTAINER_LISTS) {
    const containers = podSpec[list]
    if (!Array.isArray(containers)) continue
    containers.forEach((c: unknown, i) => {
      if (!isObject(c) || c.image === undefined) return
      const container = typeof c.name === 'string' ? c.name : `${list}[${i}]`
      const source = `${file}: ${kind} ${name}, ${list === 'containers' ? 'container' : list.replace(/s$/, '')} ${container}`
      if (typeof c.image === 'string') found.push({ text: c.image, source })
      else found.push({ text: String(c.image), source, error: 'image: is not a string' })
    })
  }
}

function dig(object: unknown, ...keys: string[]): unknown {
  let node = object
  for (const key of keys) {
    if (!isObject(node)) return undefined
    node = node[key]
  }
  return node
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}
