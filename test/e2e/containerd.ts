// A private containerd (Debian containerd 1.6) driven with `ctr`, as a real client of pullcache the
// way Kubernetes nodes and nerdctl use it: a mirror configured in hosts.toml.
//
// Everything lives under one temp dir so it cannot touch a system containerd:
//
//   <dir>/ctrd/                          config.toml, root/, state/, containerd.sock (see dockerd.ts)
//   <dir>/hosts/docker.io/hosts.toml     the mirror configuration, passed to ctr with --hosts-dir
//
// It is `ctr` that resolves and fetches (the daemon only stores content and unpacks), so it is ctr
// that reads hosts.toml. The hosts.toml is the one the README tells operators to write: Docker Hub as
// `server`, pullcache as a [host] with pull and resolve. With no internet here the fallback to
// registry-1.docker.io fails, so a pull that succeeds was served by the mirror.
//
// The native snapshotter is used: it only needs bind mounts, while overlayfs depends on the kernel
// and on what the temp dir sits on.
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { startContainerd, unmountUnder } from './dockerd.js'
import { type Daemon, makeTempDir, type RunResult, removeDir, requireBinary, run } from './processes.js'

/** One line of `ctr images ls`. */
export type CtrImage = { ref: string; type: string; digest: string; platforms: string[] }

export type PullOptions = {
  namespace: string
  /** e.g. 'linux/amd64'; ignored with allPlatforms. */
  platform?: string
  allPlatforms?: boolean
  timeoutMs?: number
}

export type Containerd = {
  readonly socket: string
  readonly hostsDir: string
  /** Runs ctr against this containerd; throws on a non-zero exit unless allowFailure. */
  ctr(
    args: readonly string[],
    options?: { namespace?: string; timeoutMs?: number; allowFailure?: boolean },
  ): Promise<RunResult>
  /**
   * Writes <hostsDir>/<registry>/hosts.toml (registry: docker.io unless given) with `mirror`
   * (http:// or https://host:port) as the only host, `headers` as that host's static headers (e.g.
   * Authorization for a mirror with accounts), and `tls`: the CA file that signed an https mirror's
   * certificate (`ca`) and a client certificate with its key (`client`).
   */
  setMirror(
    mirror: string,
    headers?: Record<string, string>,
    tls?: { ca: string; client?: { cert: string; key: string } },
    registry?: string,
  ): Promise<string>
  /**
   * `ctr images pull --hosts-dir ... --snapshotter native docker.io/<ref>`; resolves with the result
   * even when the pull fails, so tests can assert on it.
   */
  pull(ref: string, options: PullOptions): Promise<RunResult>
  images(namespace: string): Promise<CtrImage[]>
  /** Keys of the committed native snapshots in the namespace: the chain IDs of unpacked images. */
  snapshots(namespace: string): Promise<string[]>
  /** Content digests in the namespace (`ctr content ls -q`). */
  content(namespace: string): Promise<string[]>
  /**
   * Forgets the images and everything they referenced in the namespace: images rm --sync (waits
   * for the garbage collector), then content rm for whatever is left, so the next pull must fetch
   * every blob again.
   */
  forget(namespace: string, refs: readonly string[]): Promise<void>
  logs(): string[]
  close(): Promise<void>
}

export async function startPrivateContainerd(): Promise<Containerd> {
  if (process.getuid?.() !== 0) {
    throw new Error('the containerd end-to-end tests must run as root (containerd unpacks with mounts)')
  }
  const containerdBin = requireBinary('containerd')
  const ctrBin = requireCtr()
  const dir = await makeTempDir('ctr')
  const hostsDir = join(dir, 'hosts')
  let started: { socket: string; daemon: Daemon }
  try {
    started = await startContainerd(containerdBin, join(dir, 'ctrd'))
  } catch (error) {
    await removeDir(dir)
    throw error
  }
  const { socket, daemon } = started

  const ctr: Containerd['ctr'] = (args, options = {}) =>
    run(ctrBin, ['--address', socket, '--namespace', options.namespace ?? 'default', ...args], {
      timeoutMs: options.timeoutMs ?? 60_000,
      ...(options.allowFailure === undefined ? {} : { allowFailure: options.allowFailure }),
    })

  const content = async (namespace: string) =>
    (await ctr(['content', 'ls', '--quiet'], { namespace })).stdout
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '')

  return {
    socket,
    hostsDir,
    ctr,
    async setMirror(mirror, headers = {}, tls, registry = 'docker.io') {
      const file = join(hostsDir, registry, 'hosts.toml')
      await mkdir(join(hostsDir, registry), { recursive: true })
      // The registry itself, tried when the mirror fails: unreachable here, so a pull that
      // succeeds was served by the mirror.
      const server = registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`
      const host = JSON.stringify(mirror)
      const headerTable = Object.entries(headers).map(
        ([name, value]) => `  ${JSON.stringify(name)} = [${JSON.stringify(value)}]`,
      )
      await writeFile(
        file,
        [
          `server = ${JSON.stringify(server)}`,
          '',
          `[host.${host}]`,
          '  capabilities = ["pull", "resolve"]',
          ...(tls === undefined ? [] : [`  ca = ${JSON.stringify(tls.ca)}`]),
          ...(tls?.client === undefined
            ? []
            : [`  client = [[${JSON.stringify(tls.client.cert)}, ${JSON.stringify(tls.client.key)}]]`]),
          ...(headerTable.length === 0 ? [] : [`[host.${host}.header]`, ...headerTable]),
          '',
        ].join('\n'),
      )
      return file
    },
    pull: (ref, options) =>
      ctr(
        [
          'images',
          'pull',
          '--hosts-dir',
          hostsDir,
          '--snapshotter',
          'native',
          ...(options.allPlatforms === true
            ? ['--all-platforms']
            : options.platform === undefined
              ? []
              : ['--platform', options.platform]),
          ref,
        ],
        { namespace: options.namespace, allowFailure: true, timeoutMs: options.timeoutMs ?? 110_000 },
      ),
    async images(namespace) {
      const { stdout } = await ctr(['images', 'ls'], { namespace })
      // REF TYPE DIGEST SIZE PLATFORMS LABELS; SIZE is two words ("1.4 MiB").
      return stdout
        .split('\n')
        .slice(1)
        .filter((line) => line.trim() !== '')
        .map((line) => {
          const [ref = '', type = '', digest = '', , , platforms = ''] = line.trim().split(/\s+/)
          return { ref, type, digest, platforms: platforms.split(',') }
        })
    },
    async snapshots(namespace) {
      const { stdout } = await ctr(['snapshots', '--snapshotter', 'native', 'ls'], { namespace })
      // KEY PARENT KIND, with PARENT empty for a base layer.
      return stdout
        .split('\n')
        .slice(1)
        .map((line) => line.trim().split(/\s+/))
        .filter((words) => words.at(-1) === 'Committed')
        .map((words) => words[0] ?? '')
    },
    content,
    async forget(namespace, refs) {
      await ctr(['images', 'rm', '--sync', ...refs], { namespace, allowFailure: true })
      const left = await content(namespace)
      if (left.length > 0) await ctr(['content', 'rm', ...left], { namespace })
    },
    logs: () => [...daemon.stdout, ...daemon.stderr],
    async close() {
      await daemon.stop(10_000)
      await unmountUnder(dir)
      await removeDir(dir)
    },
  }
}

/** ctr comes with containerd; requireBinary alone would suggest a package named "ctr". */
function requireCtr(): string {
  try {
    return requireBinary('ctr')
  } catch {
    throw new Error(
      "e2e prerequisite missing: 'ctr' is not installed (apt-get install -y containerd). " +
        'The end-to-end tests never skip; install it or do not run test/e2e.',
    )
  }
}
