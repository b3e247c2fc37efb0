// skopeo as a client: pushes test images into the registry, and pulls through pullcache the way
// podman / CRI-O pull through a mirror (containers/image, protocol.md §4.2: GET manifests, no HEAD).
//
// skopeo is run hermetically: no policy file, no registries.conf, no auth file from the machine, and
// no retries (--retry-times defaults to 0 in 1.9), so every upstream request the tests count was
// caused by exactly one client request.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { sha256 } from '../support/sha256.js'
import type { TestImage } from './images.js'
import { type RunResult, requireBinary, run } from './processes.js'

export type Creds = { username: string; password: string }

export type Skopeo = {
  /** Push a `dir:` layout to host:port/name:tag, all platforms, digests unchanged. */
  push(image: TestImage, hostPort: string, creds: Creds): Promise<void>
  /** skopeo copy docker://ref dir:dest; `all` keeps every platform of an index. */
  pull(ref: string, dest: string, options?: PullOptions): Promise<PulledLayout>
  /** skopeo inspect --raw: the exact bytes the registry serves for ref. */
  inspectRaw(ref: string, creds?: Creds): Promise<Buffer>
  run(args: readonly string[], timeoutMs?: number): Promise<RunResult>
}

export type PullOptions = { all?: boolean; arch?: string; creds?: Creds; timeoutMs?: number }

/** A `dir:` layout written by skopeo, read back and checked. */
export type PulledLayout = {
  dir: string
  /** manifest.json: the top manifest (an index/list with --all, else the platform manifest). */
  manifest: Buffer
  /** Platform manifests stored as <hex>.manifest.json, keyed by digest. */
  instances: Map<string, Buffer>
  /** Blob files keyed by digest; each one's sha256 was checked to equal its file name. */
  blobs: Map<string, { size: number }>
}

export async function createSkopeo(workDir: string): Promise<Skopeo> {
  const binary = requireBinary('skopeo')
  await mkdir(workDir, { recursive: true })
  const registriesConf = join(workDir, 'registries.conf')
  await writeFile(registriesConf, '')
  const env = {
    ...process.env,
    CONTAINERS_REGISTRIES_CONF: registriesConf,
    REGISTRY_AUTH_FILE: join(workDir, 'auth.json'),
    TMPDIR: workDir,
  }
  // skopeo 1.9 reads /etc/containers/registries.conf whatever CONTAINERS_REGISTRIES_CONF says;
  // only the flag puts the test's own file (empty, or the mirrors a test writes) in its place.
  const skopeo = (args: readonly string[], timeoutMs = 120_000) =>
    run(binary, ['--insecure-policy', '--registries-conf', registriesConf, ...args], { env, timeoutMs })

  const inspectRaw = async (ref: string, creds?: Creds): Promise<Buffer> => {
    const result = await skopeo([
      'inspect',
      '--raw',
      '--tls-verify=false',
      ...(creds === undefined ? ['--no-creds'] : ['--creds', `${creds.username}:${creds.password}`]),
      ref.startsWith('docker://') ? ref : `docker://${ref}`,
    ])
    // skopeo prints the raw bytes without adding a newline; keep them exact for hashing.
    return Buffer.from(result.stdout, 'utf8')
  }

  return {
    run: skopeo,
    inspectRaw,
    async push(image, hostPort, creds) {
      const ref = `docker://${hostPort}/${image.name}:${image.tag}`
      await skopeo([
        'copy',
        '--all',
        '--preserve-digests',
        '--quiet',
        '--dest-tls-verify=false',
        '--dest-creds',
        `${creds.username}:${creds.password}`,
        `dir:${image.layoutDir}`,
        ref,
      ])
      // Make sure the registry serves exactly the bytes the tests will assert against.
      const served = await inspectRaw(ref, creds)
      if (sha256(served) !== image.top.digest) {
        throw new Error(
          `pushed ${ref} but the registry serves ${sha256(served)}, expected ${image.top.digest}`,
        )
      }
    },
    async pull(ref, dest, options = {}) {
      await skopeo(
        [
          ...(options.arch === undefined ? [] : ['--override-arch', options.arch]),
          'copy',
          ...(options.all === true ? ['--all'] : []),
          '--quiet',
          '--src-tls-verify=false',
          ...(options.creds === undefined
            ? ['--src-no-creds']
            : ['--src-creds', `${options.creds.username}:${options.creds.password}`]),
          `docker://${ref}`,
          `dir:${dest}`,
        ],
        options.timeoutMs,
      )
      return readLayout(dest)
    },
  }
}

/** Reads a layout skopeo wrote and checks every blob file hashes to its own name. */
export async function readLayout(dir: string): Promise<PulledLayout> {
  const manifest = await readFile(join(dir, 'manifest.json'))
  const instances = new Map<string, Buffer>()
  const blobs = new Map<string, { size: number }>()
  for (const entry of await readdir(dir)) {
    const instance = /^([0-9a-f]{64})\.manifest\.json$/.exec(entry)
    if (instance !== null) {
      const body = await readFile(join(dir, entry))
      const digest = `sha256:${instance[1]}`
      if (sha256(body) !== digest) throw new Error(`${dir}/${entry} hashes to ${sha256(body)}`)
      instances.set(digest, body)
      continue
    }
    if (!/^[0-9a-f]{64}$/.test(entry)) continue
    const { digest, size } = await hashFile(join(dir, entry))
    if (digest !== `sha256:${entry}`) throw new Error(`blob file ${dir}/${entry} hashes to ${digest}`)
    blobs.set(digest, { size })
  }
  return { dir, manifest, instances, blobs }
}

export async function hashFile(path: string): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256')
  let size = 0
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer)
    size += (chunk as Buffer).length
  }
  return { digest: `sha256:${hash.digest('hex')}`, size }
}

/** Digests every platform manifest of `image` references (configs and layers), as expected in a pull. */
export function expectedBlobDigests(image: TestImage, architectures?: readonly string[]): string[] {
  const digests = new Set<string>()
  for (const m of image.manifests) {
    if (architectures !== undefined && !architectures.includes(m.platform.architecture)) continue
    digests.add(m.config.digest)
    for (const l of m.layers) digests.add(l.digest)
  }
  return [...digests].sort()
}

/**
 * What is wrong with a pulled layout compared to `image`, as readable lines (empty when it is right).
 * `platform` is the architecture skopeo chose when the pull was not --all.
 */
export function layoutProblems(layout: PulledLayout, image: TestImage, platform?: string): string[] {
  const problems: string[] = []
  const selected =
    platform === undefined
      ? image.manifests
      : image.manifests.filter((m) => m.platform.architecture === platform)
  const top = platform === undefined ? image.top.digest : selected[0]?.digest
  if (sha256(layout.manifest) !== top)
    problems.push(`manifest.json is ${sha256(layout.manifest)}, expected ${top}`)
  if (platform === undefined && image.isIndex) {
    const want = image.manifests.map((m) => m.digest).sort()
    const got = [...layout.instances.keys()].sort()
    if (want.join() !== got.join())
      problems.push(`platform manifests ${got.join(' ')}, expected ${want.join(' ')}`)
  }
  const want = expectedBlobDigests(image, platform === undefined ? undefined : [platform])
  const got = [...layout.blobs.keys()].sort()
  for (const d of want) if (!got.includes(d)) problems.push(`blob ${d} missing`)
  for (const d of got) if (!want.includes(d)) problems.push(`unexpected blob ${d}`)
  for (const blob of image.blobs) {
    const size = layout.blobs.get(blob.digest)?.size
    if (size !== undefined && size !== blob.size)
      problems.push(`blob ${blob.digest} is ${size} bytes, expected ${blob.size}`)
  }
  return problems
}
