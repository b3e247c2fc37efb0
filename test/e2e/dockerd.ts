// A private dockerd (Debian docker.io 20.10, graphdriver image store) used as a real mirror client.
//
// Everything lives under one temp dir so it cannot touch a system Docker:
//
//   <dir>/daemon.json        empty, so /etc/docker/daemon.json is not read
//   <dir>/root               --data-root (vfs layers, image store)
//   <dir>/exec               --exec-root
//   <dir>/docker.sock        the API socket (-H unix://...)
//   <dir>/cli                DOCKER_CONFIG for the client, so ~/.docker is neither read nor written
//   <dir>/ctrd/              a private containerd: config.toml, root/, state/, containerd.sock
//
// Why a private containerd passed with --containerd: without that flag dockerd 20.10 first looks
// for a running system containerd (/run/containerd/containerd.sock) and uses it if it answers, which
// on a CI machine with the containerd service up would share its "moby" namespace with the system
// Docker. Our own namespaces are a second guard.
//
// 20.10 uses the legacy pull path (protocol.md §3.2): GET /v2/, HEAD manifest by tag, GET by digest,
// GET blobs; a mirror error falls back to registry-1.docker.io, which fails fast here (no DNS), so a
// pull that succeeds was served by the mirror. 127.0.0.0/8 is in dockerd's default insecure
// registries, and an http:// mirror URL is used as given.
import { existsSync } from 'node:fs'
import { copyFile, mkdir, readdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import { waitFor } from '../support/wait-for.js'
import {
  type Daemon,
  makeTempDir,
  type RunResult,
  removeDir,
  requireBinary,
  run,
  startDaemon,
} from './processes.js'

export type DockerImage = {
  Id: string
  RepoTags: string[] | null
  RepoDigests: string[] | null
  Architecture: string
  Os: string
}

export type Dockerd = {
  readonly host: string
  readonly dir: string
  docker(
    args: readonly string[],
    options?: { timeoutMs?: number; allowFailure?: boolean },
  ): Promise<RunResult>
  /** `docker pull <ref>`; resolves with the result even when the pull fails, so tests can assert on it. */
  pull(ref: string, options?: { platform?: string; timeoutMs?: number }): Promise<RunResult>
  inspectImage(ref: string): Promise<DockerImage>
  /** Removes the images if present (docker rmi -f), so the next pull downloads again. */
  removeImages(refs: readonly string[]): Promise<void>
  /** Daemon log lines since start, e.g. to look for "Attempting next endpoint" (mirror fallback). */
  logs(): string[]
  close(): Promise<void>
}

export type DockerdOptions = { mirror: string; startTimeoutMs?: number }

export async function startDockerd(options: DockerdOptions): Promise<Dockerd> {
  if (process.getuid?.() !== 0) {
    throw new Error('the dockerd end-to-end tests must run as root (dockerd needs it for mounts and chroot)')
  }
  const dockerdBin = requireBinary('dockerd')
  // The Debian client (/usr/bin/docker) matches the daemon; a newer CLI elsewhere on PATH would
  // still work through API negotiation, but there is no reason to mix versions.
  const dockerBin = requireBinary('docker', ['/usr/bin/docker'])
  requireBinary('runc')
  const containerdBin = requireBinary('containerd')
  const dir = await makeTempDir('dockerd')
  const containerd = await startContainerd(containerdBin, join(dir, 'ctrd'))
  const socket = join(dir, 'docker.sock')
  const host = `unix://${socket}`
  const configFile = join(dir, 'daemon.json')
  await writeFile(configFile, '{}\n')
  const daemon: Daemon = startDaemon(dockerdBin, [
    '--config-file',
    configFile,
    '--data-root',
    join(dir, 'root'),
    '--exec-root',
    join(dir, 'exec'),
    '--pidfile',
    join(dir, 'docker.pid'),
    '-H',
    host,
    '--storage-driver',
    'vfs',
    // No container ever runs: keep dockerd away from the host's firewall and network devices.
    '--iptables=false',
    '--ip6tables=false',
    '--ip-masq=false',
    '--bridge=none',
    '--userland-proxy=false',
    '--containerd',
    containerd.socket,
    '--containerd-namespace',
    'pce2e',
    '--containerd-plugins-namespace',
    'pce2e-plugins',
    '--registry-mirror',
    options.mirror,
  ])
  const closeAll = async () => {
    await daemon.stop(15_000)
    await containerd.daemon.stop(10_000)
    await unmountUnder(dir)
    await removeDir(dir)
  }
  try {
    await waitFor(
      async () => {
        if (!daemon.isRunning()) throw new Error(`dockerd exited:\n${daemon.tail(60)}`)
        return (await ping(socket)) ? true : undefined
      },
      { timeoutMs: options.startTimeoutMs ?? 60_000, intervalMs: 200, what: 'dockerd API socket' },
    )
  } catch (error) {
    const tail = daemon.tail(60)
    await closeAll()
    throw new Error(`dockerd did not start; its log:\n${tail}`, { cause: error })
  }

  const env = { ...process.env, DOCKER_CONFIG: join(dir, 'cli'), DOCKER_HOST: host }
  const docker: Dockerd['docker'] = (args, runOptions = {}) =>
    run(dockerBin, ['-H', host, ...args], {
      env,
      timeoutMs: runOptions.timeoutMs ?? 120_000,
      ...(runOptions.allowFailure === undefined ? {} : { allowFailure: runOptions.allowFailure }),
    })

  return {
    host,
    dir,
    docker,
    pull: (ref, pullOptions = {}) =>
      docker(
        ['pull', ...(pullOptions.platform === undefined ? [] : ['--platform', pullOptions.platform]), ref],
        {
          allowFailure: true,
          timeoutMs: pullOptions.timeoutMs ?? 110_000,
        },
      ),
    async inspectImage(ref) {
      const result = await docker(['image', 'inspect', '--format', '{{json .}}', ref])
      return JSON.parse(result.stdout) as DockerImage
    },
    async removeImages(refs) {
      await docker(['rmi', '-f', ...refs], { allowFailure: true })
    },
    logs: () => [...daemon.stdout, ...daemon.stderr],
    close: closeAll,
  }
}

/**
 * Where dockerd 20.10 looks for a registry's CA (registry.CertsDir): fixed for a rootful daemon, with
 * no flag to move it. It is read for each pull, and only for a host dockerd treats as secure:
 * 127.0.0.0/8 is always among its insecure registries (verification is skipped, certs.d never read),
 * so a test of certs.d uses a mirror on [::1].
 */
export const DOCKER_CERTS_DIR = '/etc/docker/certs.d'

/**
 * Installs `caFile` as <certs.d>/<hostPort>/ca.crt, and a client certificate as client.cert with
 * client.key, as the README tells operators to; resolves with the function that removes them again
 * (and certs.d itself when this made it and it is left empty).
 */
export async function trustRegistryCa(
  hostPort: string,
  caFile: string,
  client?: { cert: string; key: string },
): Promise<() => Promise<void>> {
  const madeRoot = !existsSync(DOCKER_CERTS_DIR)
  const dir = join(DOCKER_CERTS_DIR, hostPort)
  await mkdir(dir, { recursive: true })
  await copyFile(caFile, join(dir, 'ca.crt'))
  if (client !== undefined) {
    await copyFile(client.cert, join(dir, 'client.cert'))
    await copyFile(client.key, join(dir, 'client.key'))
  }
  return async () => {
    await rm(dir, { recursive: true, force: true })
    if (madeRoot && (await readdir(DOCKER_CERTS_DIR).catch(() => ['?'])).length === 0) {
      await rmdir(DOCKER_CERTS_DIR).catch(() => {})
    }
  }
}

export async function startContainerd(
  binary: string,
  dir: string,
): Promise<{ socket: string; daemon: Daemon }> {
  await mkdir(dir, { recursive: true })
  const socket = join(dir, 'containerd.sock')
  const config = join(dir, 'config.toml')
  // CRI is for kubelet and only slows startup; debug and metrics listeners would need ports.
  await writeFile(
    config,
    [
      'version = 2',
      `root = ${JSON.stringify(join(dir, 'root'))}`,
      `state = ${JSON.stringify(join(dir, 'state'))}`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = ${JSON.stringify(socket)}`,
      '[ttrpc]',
      `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
      '[debug]',
      '  address = ""',
      '[metrics]',
      '  address = ""',
      '',
    ].join('\n'),
  )
  const daemon = startDaemon(binary, ['--config', config])
  try {
    await waitFor(
      async () => {
        if (!daemon.isRunning()) throw new Error(`containerd exited:\n${daemon.tail(40)}`)
        return existsSync(socket) ? true : undefined
      },
      { timeoutMs: 30_000, intervalMs: 100, what: 'private containerd socket' },
    )
  } catch (error) {
    await daemon.stop(5000)
    throw new Error(`containerd did not start:\n${daemon.tail(40)}`, { cause: error })
  }
  return { socket, daemon }
}

function ping(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ socketPath, path: '/_ping', timeout: 1000 }, (res) => {
      res.resume()
      resolve(res.statusCode === 200)
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(false))
    req.end()
  })
}

/** dockerd and its containerd may leave mounts (shm, netns) under their dirs; rm -rf cannot cross them. */
export async function unmountUnder(dir: string): Promise<void> {
  const mounts = await readFile('/proc/self/mounts', 'utf8').catch(() => '')
  const points = mounts
    .split('\n')
    .map((line) => line.split(' ')[1] ?? '')
    .map((point) => point.replace(/\\040/g, ' '))
    .filter((point) => point.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length)
  for (const point of points) await run('umount', ['-l', point], { allowFailure: true, timeoutMs: 10_000 })
}
