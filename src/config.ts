// Configuration: embedded defaults, then an optional JSON file, then PULLCACHE_* environment
// variables, then command-line flags, validated by the schema (config-schema.ts) in one pass.
// Secrets never live in the file: the upstream password comes from the environment or a file
// (systemd's LoadCredential= puts one under $CREDENTIALS_DIRECTORY).

import { readFileSync } from 'node:fs'
import type { z } from 'zod'
import { toFileForm } from './config-file-form.js'
import { configSchema as schema } from './config-schema.js'
import { type ClientAuth, tlsProblems } from './tls.js'

type Parsed = z.output<typeof schema>

export interface Config extends Omit<Parsed, 'upstream' | 'upstreams' | 'tls' | 'cluster' | 'storage'> {
  upstream: Parsed['upstream'] & { password: string | null }
  /** With the bucket's keys when they are given (else the SDK looks for them itself, e.g. a role). */
  storage: Parsed['storage'] & { credentials: BucketCredentials | null }
  /** secret: what the nodes present to each other (never in the file, never logged). */
  cluster: Parsed['cluster'] & { secret: string | null }
  upstreams: (Parsed['upstreams'][number] & { password: string | null })[]
  /** client_auth as it applies: its default depends on client_ca. */
  tls: Omit<Parsed['tls'], 'client_auth'> & { client_auth: ClientAuth }
}

export interface BucketCredentials {
  accessKeyId: string
  secretAccessKey: string
}

/** A tag pattern as the config holds it (cache.pins, cache.tag_freshness_rules), compiled. */
export type TagPattern = Parsed['cache']['pins'][number]

export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID'
  readonly problems: string[]
  constructor(problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

export interface ConfigSources {
  /** Path of a JSON config file, or undefined for embedded defaults. */
  file?: string | undefined
  env?: NodeJS.ProcessEnv
  /** Dotted keys from command-line flags, e.g. { 'upstream.url': '...' }. */
  flags?: Record<string, string | undefined>
}

/** Environment variable -> config key. Each takes the same text form as the file. */
const ENV_KEYS: Record<string, string> = {
  PULLCACHE_LISTEN: 'listen',
  PULLCACHE_DATA_DIR: 'data_dir',
  PULLCACHE_UPSTREAM: 'upstream.url',
  PULLCACHE_UPSTREAM_HOST: 'upstream.host',
  PULLCACHE_UPSTREAM_USERNAME: 'upstream.username',
  PULLCACHE_UPSTREAM_PASSWORD_FILE: 'upstream.password_file',
  PULLCACHE_UPSTREAM_MAX_CONCURRENT_FETCHES: 'upstream.max_concurrent_fetches',
  PULLCACHE_TAG_FRESHNESS: 'cache.tag_freshness',
  PULLCACHE_MAX_SIZE: 'cache.max_size',
  PULLCACHE_OFFLINE: 'offline',
  PULLCACHE_HEADER_TIMEOUT: 'limits.header_timeout',
  PULLCACHE_SEND_TIMEOUT: 'limits.send_timeout',
  PULLCACHE_KEEPALIVE_TIMEOUT: 'limits.keepalive_timeout',
  PULLCACHE_MAX_CONNECTIONS: 'limits.max_connections',
  PULLCACHE_LOG_LEVEL: 'log.level',
  PULLCACHE_ACCESS_LOG: 'log.access',
  PULLCACHE_ACCOUNTING_RETENTION: 'index.accounting_retention',
  PULLCACHE_AUTH_HTPASSWD: 'auth.htpasswd',
  PULLCACHE_AUTH_ANONYMOUS: 'auth.anonymous',
  PULLCACHE_ADMIN_ALLOW: 'admin.allow',
  PULLCACHE_TLS_CERT: 'tls.cert',
  PULLCACHE_TLS_KEY: 'tls.key',
  PULLCACHE_TLS_CLIENT_CA: 'tls.client_ca',
  PULLCACHE_TLS_CLIENT_AUTH: 'tls.client_auth',
  PULLCACHE_NODE_URL: 'cluster.node_url',
  PULLCACHE_PEERS: 'cluster.peers',
  PULLCACHE_PEERS_DNS: 'cluster.peers_dns',
  PULLCACHE_PEERS_FROM_BUCKET: 'cluster.peers_from_bucket',
  PULLCACHE_CLUSTER_SECRET_FILE: 'cluster.secret_file',
  PULLCACHE_STORAGE: 'storage.type',
  PULLCACHE_S3_ENDPOINT: 'storage.s3.endpoint',
  PULLCACHE_S3_BUCKET: 'storage.s3.bucket',
  PULLCACHE_S3_PREFIX: 'storage.s3.prefix',
  PULLCACHE_S3_REGION: 'storage.s3.region',
  PULLCACHE_S3_FORCE_PATH_STYLE: 'storage.s3.force_path_style',
  PULLCACHE_S3_ACCESS_KEY_ID_FILE: 'storage.s3.access_key_id_file',
  PULLCACHE_S3_SECRET_ACCESS_KEY_FILE: 'storage.s3.secret_access_key_file',
  PULLCACHE_S3_MAX_SIZE: 'storage.s3.max_size',
  PULLCACHE_S3_REDIRECT: 'storage.s3.redirect.enabled',
  PULLCACHE_S3_REDIRECT_TTL: 'storage.s3.redirect.ttl',
  PULLCACHE_S3_PUBLIC_ENDPOINT: 'storage.s3.redirect.public_endpoint',
}

const NUMERIC_KEYS = new Set([
  'upstream.max_concurrent_fetches',
  'upstream.connections',
  'limits.max_connections',
])
const BOOLEAN_KEYS = new Set([
  'log.access',
  'offline',
  'upstream.library_prefix',
  'auth.anonymous',
  'storage.s3.force_path_style',
  'cluster.peers_from_bucket',
  'storage.s3.redirect.enabled',
])
/** Comma-separated lists in the environment. */
const LIST_KEYS = new Set(['admin.allow', 'cluster.peers'])

function setPath(target: Record<string, unknown>, dotted: string, text: string, problems: string[]) {
  const parts = dotted.split('.')
  let node = target
  for (const part of parts.slice(0, -1)) {
    const next = node[part]
    if (typeof next !== 'object' || next === null) node[part] = {}
    node = node[part] as Record<string, unknown>
  }
  let value: unknown = text
  if (NUMERIC_KEYS.has(dotted)) value = /^\d+$/.test(text) ? Number(text) : text
  if (BOOLEAN_KEYS.has(dotted)) {
    if (/^(1|true|yes|on)$/i.test(text)) value = true
    else if (/^(0|false|no|off)$/i.test(text)) value = false
    else problems.push(`${dotted}: expected true or false, got ${JSON.stringify(text)}`)
  }
  if (LIST_KEYS.has(dotted)) {
    value = text
      .split(',')
      .map((item) => item.trim())
      .filter((item) => item !== '')
  }
  node[parts.at(-1)!] = value
}

export function loadConfig(sources: ConfigSources = {}): Config {
  const env = sources.env ?? process.env
  const problems: string[] = []
  let raw: Record<string, unknown> = {}
  const file = sources.file ?? env.PULLCACHE_CONFIG
  if (file) {
    try {
      const parsed: unknown = JSON.parse(readFileSync(file, 'utf8'))
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
        problems.push(`${file}: the config must be a JSON object`)
      } else {
        raw = parsed as Record<string, unknown>
      }
    } catch (err) {
      problems.push(`${file}: ${(err as Error).message}`)
    }
  }
  for (const [name, key] of Object.entries(ENV_KEYS)) {
    const value = env[name]
    if (value !== undefined && value !== '') setPath(raw, key, value, problems)
  }
  // One endpoint by environment, for a container started without a config file; it joins the
  // file's endpoints under the name "env". Its headers, if any, need the file.
  const notifyUrl = env.PULLCACHE_NOTIFY_URL
  if (notifyUrl !== undefined && notifyUrl !== '') addEnvEndpoint(raw, notifyUrl, problems)
  for (const [key, value] of Object.entries(sources.flags ?? {})) {
    if (value !== undefined) setPath(raw, key, value, problems)
  }

  const result = schema.safeParse(raw)
  if (!result.success) {
    for (const issue of result.error.issues) {
      const where = issue.path.length > 0 ? issue.path.join('.') : '(top level)'
      problems.push(`${where}: ${issue.message}`)
    }
  }

  const password = readPassword(
    result.success ? result.data.upstream.password_file : null,
    'upstream',
    env.PULLCACHE_UPSTREAM_PASSWORD,
    problems,
  )
  // The other upstreams' passwords come from their files only: one environment variable per
  // list entry would be named by position, which moves when the list is edited.
  const upstreams = (result.success ? result.data.upstreams : []).map((u, i) => ({
    ...u,
    password: readPassword(u.password_file, `upstreams.${i}`, undefined, problems),
  }))
  const clusterSecret = readPassword(
    result.success ? result.data.cluster.secret_file : null,
    'cluster',
    env.PULLCACHE_CLUSTER_SECRET,
    problems,
    'secret',
  )
  const credentials = result.success ? bucketCredentials(result.data.storage, env, problems) : null
  const tls = result.success ? tlsOf(result.data.tls) : undefined
  // The files are read now, so a missing file or a key of another certificate stops the start
  // with the other config problems (and shows in `config check`), not at the first handshake.
  if (
    tls !== undefined &&
    (tls.cert !== null || tls.key !== null || tls.client_ca !== null || tls.client_auth !== 'none')
  ) {
    problems.push(...tlsProblems(tls))
  }
  if (problems.length > 0 || !result.success || tls === undefined) throw new ConfigError(problems)
  const parsed = result.data
  const withoutUser = [
    ...(password !== null && parsed.upstream.username === null ? ['upstream'] : []),
    ...upstreams.flatMap((u, i) => (u.password !== null && u.username === null ? [`upstreams.${i}`] : [])),
  ]
  if (withoutUser.length > 0) {
    throw new ConfigError(withoutUser.map((at) => `${at}.username: a password is set but no username`))
  }
  if (!parsed.auth.anonymous && parsed.auth.htpasswd === null && tls.client_ca === null) {
    throw new ConfigError([
      'auth.anonymous: turning anonymous access off needs accounts in auth.htpasswd or client certificates (tls.client_ca)',
    ])
  }
  if (parsed.cluster.peers.length > 0 && (parsed.cluster.node_url === null || clusterSecret === null)) {
    throw new ConfigError([
      'cluster: with peers, this node needs its own URL (cluster.node_url) and the secret the nodes share (cluster.secret_file or PULLCACHE_CLUSTER_SECRET)',
    ])
  }
  const found = parsed.cluster.peers_dns !== null || parsed.cluster.peers_from_bucket
  if (found && (parsed.cluster.node_url === null || clusterSecret === null)) {
    throw new ConfigError([
      'cluster: with peers_dns or peers_from_bucket, this node needs its own URL as the others reach it (cluster.node_url) and the secret the nodes share (cluster.secret_file or PULLCACHE_CLUSTER_SECRET)',
    ])
  }
  if (parsed.cluster.peers_from_bucket && parsed.storage.type !== 's3') {
    throw new ConfigError([
      'cluster.peers_from_bucket: heartbeats live in the bucket, which needs S3 storage (storage.type "s3")',
    ])
  }
  const config: Config = {
    ...parsed,
    upstream: { ...parsed.upstream, password },
    upstreams,
    cluster: { ...parsed.cluster, secret: clusterSecret },
    tls,
    storage: { ...parsed.storage, credentials },
  }
  return deepFreeze(config)
}

function addEnvEndpoint(raw: Record<string, unknown>, url: string, problems: string[]): void {
  const section = raw.notifications ?? {}
  if (typeof section !== 'object' || section === null || Array.isArray(section)) return
  const endpoints = (section as Record<string, unknown>).endpoints ?? []
  if (!Array.isArray(endpoints)) return
  if (endpoints.some((e) => (e as { name?: unknown } | null)?.name === 'env')) {
    problems.push('PULLCACHE_NOTIFY_URL: the config file already has an endpoint named "env"')
    return
  }
  raw.notifications = { ...section, endpoints: [...endpoints, { name: 'env', url }] }
}

/** The tls section with client_auth's default applied. */
function tlsOf(parsed: Parsed['tls']): Config['tls'] {
  return { ...parsed, client_auth: parsed.client_auth ?? (parsed.client_ca === null ? 'none' : 'optional') }
}

/**
 * The bucket's keys: the standard AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the files
 * named in storage.s3 (systemd's LoadCredential=), the pair from one place. Neither: null, and
 * the SDK's own chain (a profile, an instance role) is left to find them. Only for S3 storage.
 */
function bucketCredentials(
  storage: Parsed['storage'],
  env: NodeJS.ProcessEnv,
  problems: string[],
): BucketCredentials | null {
  if (storage.type !== 's3') return null
  const { access_key_id_file: idFile, secret_access_key_file: secretFile } = storage.s3
  const fromEnv = [env.AWS_ACCESS_KEY_ID, env.AWS_SECRET_ACCESS_KEY]
  const files = [idFile, secretFile]
  // Key files may end in a newline or stray blanks; no key has either.
  const read = (file: string, key: string) =>
    readSecretFile(file, `storage.s3.${key}`, problems)?.trim() ?? ''
  if (files.some((f) => f !== null)) {
    if (idFile === null || secretFile === null) {
      problems.push('storage.s3: name both key files (access_key_id_file and secret_access_key_file)')
      return null
    }
    return {
      accessKeyId: read(idFile, 'access_key_id_file'),
      secretAccessKey: read(secretFile, 'secret_access_key_file'),
    }
  }
  const [accessKeyId, secretAccessKey] = fromEnv
  if (accessKeyId && secretAccessKey) return { accessKeyId, secretAccessKey }
  if (accessKeyId || secretAccessKey)
    problems.push('storage.s3: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither')
  return null
}

/**
 * A password (an upstream's) or a secret (the cluster's), from the environment (`fromEnv`) or its
 * file (`<at>.<what>_file`); never from the config file itself.
 */
function readPassword(
  file: string | null,
  at: string,
  fromEnv: string | undefined,
  problems: string[],
  what: 'password' | 'secret' = 'password',
): string | null {
  if (fromEnv !== undefined && fromEnv !== '') {
    if (file !== null) problems.push(`${at}: set the ${what} by environment or by file, not both`)
    return fromEnv
  }
  return file === null ? null : readSecretFile(file, `${at}.${what}_file`, problems)
}

/** A secret's file, read at load; `key` names it in the problem when it cannot be read. */
function readSecretFile(file: string, key: string, problems: string[]): string | null {
  try {
    // A trailing newline is what editors and `echo` leave; it is never part of a secret.
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '')
  } catch (err) {
    problems.push(`${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`)
    return null
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child)
    Object.freeze(value)
  }
  return value
}

/**
 * The config as the file `--config` reads: loading it gives this config back (the password
 * aside, which never lives in the file). For `config check`; secrets are left out.
 */
export function fileForm(config: Config): Record<string, unknown> {
  return toFileForm(schema, config) as Record<string, unknown>
}

/** The environment variable that sets a config key, or undefined when none does. */
export function envNameOf(key: string): string | undefined {
  return Object.entries(ENV_KEYS).find(([, k]) => k === key)?.[0]
}
