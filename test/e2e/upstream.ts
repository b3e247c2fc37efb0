// The fake Docker Hub that pullcache mirrors:
//
//   pullcache ──> counting proxy ──> docker-registry (token auth) ── realm ──> token server
//                 (upstream.url)     (upstream.registry.url)                   (upstream.tokens)
//
// Pullcache is pointed at the proxy, so every request it makes upstream is counted; images are pushed
// straight to the registry so that pushing does not show up in those counts. The token realm is a
// separate origin, as auth.docker.io is separate from registry-1.docker.io.
import { type CountingProxy, startCountingProxy } from './counting-proxy.js'
import { makeTempDir, removeDir, requireBinary } from './processes.js'
import { type Registry, startRegistry } from './registry.js'
import { createSigningMaterial, startTokenServer, type TokenServer, type TokenUser } from './token-server.js'

/** Hub's service name, so pullcache sees the same challenge it will see in production. */
export const SERVICE = 'registry.docker.io'
export const ISSUER = 'pullcache-e2e-auth'

/** Can push; used by the harness to upload test images. */
export const PUSHER: TokenUser = {
  username: 'e2e-pusher',
  password: 'push-secret-1f6b2c',
  actions: ['pull', 'push'],
}
/** A pull-only account, the kind of account pullcache is configured with in production. */
export const PULLER: TokenUser = {
  username: 'e2e-puller',
  password: 'pull-secret-9c41d7e2a8',
  actions: ['pull'],
}

export type Upstream = {
  /** What pullcache uses as PULLCACHE_UPSTREAM. */
  readonly url: string
  readonly proxy: CountingProxy
  readonly registry: Registry
  readonly tokens: TokenServer
  readonly pusher: TokenUser
  readonly puller: TokenUser
  /** Upstream down: proxy, registry and token server stop listening (connection refused). */
  stop(): Promise<void>
  /** Back on the same ports with the same data. */
  start(): Promise<void>
  close(): Promise<void>
}

export type UpstreamOptions = {
  tokenExpiresInSeconds?: number
  /** Repositories anonymous tokens grant nothing on; the puller and pusher accounts may pull them. */
  privateRepos?: readonly string[]
}

/** What a start made, taken down last first by close(), its temp dir last of all. */
interface Owned {
  add(closer: () => Promise<void>): void
  close(): Promise<void>
}

/**
 * Runs `start` in a new temp dir; what it adds to `owned` is closed by the close() it hands out,
 * or at once when the start fails halfway.
 */
async function startInDir<T>(label: string, start: (dir: string, owned: Owned) => Promise<T>): Promise<T> {
  const dir = await makeTempDir(label)
  const closers: (() => Promise<void>)[] = [() => removeDir(dir)]
  const owned: Owned = {
    add: (closer) => closers.push(closer),
    async close() {
      for (const closer of closers.reverse()) await closer().catch(() => {})
      closers.length = 0
    },
  }
  try {
    return await start(dir, owned)
  } catch (error) {
    await owned.close()
    throw error
  }
}

export function startUpstream(options: UpstreamOptions = {}): Promise<Upstream> {
  const openssl = requireBinary('openssl')
  return startInDir('upstream', async (dir, owned) => {
    const signing = await createSigningMaterial(dir, openssl)
    const tokens = await startTokenServer({
      signing,
      issuer: ISSUER,
      service: SERVICE,
      users: [PUSHER, PULLER],
      ...(options.privateRepos === undefined ? {} : { privateRepos: options.privateRepos }),
      ...(options.tokenExpiresInSeconds === undefined
        ? {}
        : { expiresInSeconds: options.tokenExpiresInSeconds }),
    })
    owned.add(() => tokens.close())
    const registry = await startRegistry(dir, {
      realm: tokens.realm,
      service: SERVICE,
      issuer: ISSUER,
      rootCertBundle: signing.certPath,
    })
    owned.add(() => registry.close())
    const proxy = await startCountingProxy(registry.url)
    owned.add(() => proxy.close())
    return {
      url: proxy.url,
      proxy,
      registry,
      tokens,
      pusher: PUSHER,
      puller: PULLER,
      async stop() {
        await proxy.stop()
        await Promise.all([registry.stop(), tokens.stop()])
      },
      async start() {
        await Promise.all([registry.start(), tokens.start()])
        await proxy.start()
      },
      close: owned.close,
    }
  })
}

/** A registry that is not Docker Hub: Basic auth from an htpasswd file, behind a counting proxy. */
export type BasicUpstream = {
  /** The upstream URL pullcache is given for it. */
  readonly url: string
  readonly proxy: CountingProxy
  readonly registry: Registry
  close(): Promise<void>
}

/** `htpasswd`: a bcrypt htpasswd file (accounts.ts writeHtpasswd) whose accounts may pull and push. */
export function startBasicUpstream(htpasswd: string): Promise<BasicUpstream> {
  return startInDir('basic-upstream', async (dir, owned) => {
    const registry = await startRegistry(dir, { htpasswd })
    owned.add(() => registry.close())
    const proxy = await startCountingProxy(registry.url)
    owned.add(() => proxy.close())
    return { url: proxy.url, proxy, registry, close: owned.close }
  })
}
