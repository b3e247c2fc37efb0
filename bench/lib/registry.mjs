// distribution's registry (`docker-registry serve`) as the benches run it: the upstream, with
// filesystem storage and no auth, or, given `remote`, a mirror in proxy mode. One config for
// every bench, so the upstream they measure against is the same one.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { buildUpstreamData } from './data.mjs'
import { answers, freePort, startDaemon } from './procs.mjs'

/**
 * Starts a registry named `name` on `port` (one chosen by the OS if not given), its config
 * written under `configDir`, its output under `logDir`. Resolves with the daemon and its URL.
 */
export async function startRegistry(name, { configDir, logDir, storage, port, remote, env }) {
  mkdirSync(storage, { recursive: true })
  const listen = port ?? (await freePort())
  const config = join(configDir, `${name}.yml`)
  // JSON is YAML. Distribution's usual cache config; proxy mode only when `remote` is given.
  writeFileSync(
    config,
    JSON.stringify({
      version: 0.1,
      log: { level: 'warn', accesslog: { disabled: true }, formatter: 'text' },
      storage: {
        filesystem: { rootdirectory: storage },
        cache: { blobdescriptor: 'inmemory' },
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: { addr: `127.0.0.1:${listen}`, secret: 'pullcache-bench-secret' },
      ...(remote ? { proxy: { remoteurl: remote } } : {}),
    }),
  )
  const url = `http://127.0.0.1:${listen}`
  const daemon = await startDaemon(name, 'docker-registry', ['serve', config], {
    env,
    logDir,
    ready: answers(`${url}/v2/`),
  })
  return { daemon, url }
}

/**
 * The upstream of the cold and cluster benches, under `work`: `count` + 1 random blobs of `size`
 * bytes written into its storage (bench/lib/data.mjs), then a registry serving them.
 */
export async function startUpstream({ work, logDir, size, count }) {
  const storage = join(work, 'upstream')
  const data = buildUpstreamData(storage, work, size, count)
  const { daemon, url } = await startRegistry('upstream', { configDir: work, logDir, storage })
  return { data, daemon, url }
}
