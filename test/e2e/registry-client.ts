// Direct HTTP requests to pullcache's registry API, for what a CLI client cannot show: response
// headers (X-Pullcache-Cache), and many concurrent downloads hashed while they stream.
import { createHash } from 'node:crypto'
import { Agent, request } from 'undici'

/** One pool for the whole file; enough connections that concurrent tests never queue behind each other. */
const agent = new Agent({ connections: 32, headersTimeout: 60_000, bodyTimeout: 60_000 })

export const ACCEPT_ALL_MANIFESTS = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ')

export type Fetched = {
  status: number
  headers: Record<string, string>
  /** sha256 of the body, computed while it streamed. */
  digest: string
  size: number
  /** The body, only when asked to keep it (manifests); never for blobs. */
  body: Buffer | null
  durationMs: number
}

export type FetchOptions = {
  method?: 'GET' | 'HEAD'
  headers?: Record<string, string>
  keepBody?: boolean
  timeoutMs?: number
}

export async function fetchHashed(url: string, options: FetchOptions = {}): Promise<Fetched> {
  const started = Date.now()
  const res = await request(url, {
    method: options.method ?? 'GET',
    headers: options.headers ?? {},
    dispatcher: agent,
    signal: AbortSignal.timeout(options.timeoutMs ?? 110_000),
  })
  const hash = createHash('sha256')
  const kept: Buffer[] = []
  let size = 0
  for await (const chunk of res.body) {
    const buffer = chunk as Buffer
    hash.update(buffer)
    size += buffer.length
    if (options.keepBody === true) kept.push(buffer)
  }
  const headers: Record<string, string> = {}
  for (const [name, value] of Object.entries(res.headers)) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value
  }
  return {
    status: res.statusCode,
    headers,
    digest: `sha256:${hash.digest('hex')}`,
    size,
    body: options.keepBody === true ? Buffer.concat(kept) : null,
    durationMs: Date.now() - started,
  }
}

export function getManifest(base: string, name: string, reference: string, method: 'GET' | 'HEAD' = 'GET') {
  return fetchHashed(`${base}/v2/${name}/manifests/${reference}`, {
    method,
    headers: { accept: ACCEPT_ALL_MANIFESTS },
    keepBody: true,
  })
}

export function getBlob(base: string, name: string, digest: string, method: 'GET' | 'HEAD' = 'GET') {
  return fetchHashed(`${base}/v2/${name}/blobs/${digest}`, { method })
}

export async function closeRegistryClient(): Promise<void> {
  await agent.close()
}
