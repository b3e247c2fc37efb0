// A real distribution registry (Debian's docker-registry 2.8) as the stand-in for registry-1.docker.io:
// filesystem storage in a temp dir, token auth the way Hub does it (protocol.md §2.1), or Basic auth
// from an htpasswd file, the way many company registries are run.
//
//   <dir>/config.yml    written once; http.addr is fixed so stop()/start() come back on the same port
//   <dir>/storage/      registry data, kept across stop()/start()
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { freePort } from '../support/free-ports.js'
import { waitFor } from '../support/wait-for.js'
import { type Daemon, requireBinary, startDaemon } from './processes.js'

/** Token auth the way Docker Hub does it, or Basic auth from an htpasswd file (bcrypt entries). */
export type RegistryAuth =
  | { realm: string; service: string; issuer: string; rootCertBundle: string }
  | { htpasswd: string }

export type Registry = {
  /** http://127.0.0.1:PORT, straight to the registry (no counting proxy). */
  readonly url: string
  readonly hostPort: string
  readonly port: number
  readonly dir: string
  stop(): Promise<void>
  start(): Promise<void>
  close(): Promise<void>
  /** Recent registry log lines, for failure messages. */
  logs(): string
}

export async function startRegistry(dir: string, auth: RegistryAuth): Promise<Registry> {
  const binary = requireBinary('docker-registry')
  const configPath = join(dir, 'config.yml')
  let port = 0
  let daemon: Daemon | undefined
  let lastLogs = ''

  const launch = async (): Promise<Daemon> => {
    const d = startDaemon(binary, ['serve', configPath], {
      // The registry reads REGISTRY_* variables as config overrides; do not inherit any.
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_'))),
    })
    try {
      await waitFor(
        async () => {
          if (!d.isRunning()) throw new Error(`docker-registry exited:\n${d.tail()}`)
          const res = await fetch(`http://127.0.0.1:${port}/v2/`, { signal: AbortSignal.timeout(1000) })
          await res.body?.cancel()
          // 401 with the expected challenge means the auth config was accepted.
          const scheme = 'htpasswd' in auth ? /^Basic / : /^Bearer /
          return res.status === 401 && scheme.test(res.headers.get('www-authenticate') ?? '')
            ? true
            : undefined
        },
        { timeoutMs: 15_000, what: `docker-registry on port ${port}` },
      )
    } catch (error) {
      await d.stop(2000)
      throw new Error(`docker-registry did not become ready:\n${d.tail()}`, { cause: error })
    }
    return d
  }

  // The port is chosen before the process binds it, so another process may take it in between;
  // retry a few times with a fresh port rather than fail the suite on that race.
  for (let attempt = 1; daemon === undefined; attempt++) {
    port = await freePort()
    await writeFile(configPath, registryConfig(dir, port, auth))
    try {
      daemon = await launch()
    } catch (error) {
      if (attempt >= 3) throw error
    }
  }

  const stop = async () => {
    const d = daemon
    daemon = undefined
    if (d === undefined) return
    await d.stop(5000)
    lastLogs = d.tail()
  }
  return {
    get url() {
      return `http://127.0.0.1:${port}`
    },
    get hostPort() {
      return `127.0.0.1:${port}`
    },
    get port() {
      return port
    },
    dir,
    stop,
    async start() {
      if (daemon === undefined) daemon = await launch()
    },
    close: stop,
    logs: () => daemon?.tail() ?? lastLogs,
  }
}

function registryConfig(dir: string, port: number, auth: RegistryAuth): string {
  // JSON is valid YAML, which spares us a YAML writer.
  return JSON.stringify(
    {
      version: 0.1,
      log: { level: 'warn', accesslog: { disabled: true }, formatter: 'text' },
      storage: {
        filesystem: { rootdirectory: join(dir, 'storage') },
        delete: { enabled: true },
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: { addr: `127.0.0.1:${port}`, secret: 'pullcache-e2e-upload-secret' },
      auth:
        'htpasswd' in auth
          ? { htpasswd: { realm: 'pullcache-e2e-basic', path: auth.htpasswd } }
          : {
              token: {
                realm: auth.realm,
                service: auth.service,
                issuer: auth.issuer,
                rootcertbundle: auth.rootCertBundle,
              },
            },
    },
    null,
    2,
  )
}
