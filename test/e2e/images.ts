// Test images generated from random bytes, written as skopeo `dir:` layouts ready to push.
//
// A `dir:` layout (containers/image dir transport) is used rather than an OCI layout because it stores
// blobs and manifests byte for byte and accepts Docker schema2 as well as OCI manifests:
//
//   <layout>/version                    "Directory Transport Version: 1.1"
//   <layout>/manifest.json              what the tag points at (manifest, OCI index or Docker list)
//   <layout>/<hex>.manifest.json        each platform manifest of an index or list
//   <layout>/<hex>                      every config and layer blob, named by its sha256
//
// Pushed with `skopeo copy --all --preserve-digests`, nothing is converted or recompressed, so the
// digests computed here are the digests in the registry (pushImage in skopeo.ts re-reads them to make
// sure).
import { createHash, randomBytes } from 'node:crypto'
import { createWriteStream, existsSync } from 'node:fs'
import { copyFile, link, mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { isMainThread } from 'node:worker_threads'
import { createGzip } from 'node:zlib'
import { sha256 } from '../support/sha256.js'
import { removeDir } from './processes.js'

export const MEDIA = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar+gzip',
} as const

export type Format = 'docker' | 'oci'
export type Descriptor = { mediaType: string; digest: string; size: number }
export type Platform = { os: string; architecture: string; variant?: string }
export type Layer = Descriptor & { diffId: string; file: string }
export type Manifest = Descriptor & { body: Buffer; platform: Platform; config: Descriptor; layers: Layer[] }

export type TestImage = {
  /** Repository name as the registry sees it, e.g. 'library/small'. */
  name: string
  tag: string
  /** The name a Docker client uses for it: 'small' means docker.io/library/small. */
  shortName: string
  /** What the tag points at: a manifest, or an OCI index / Docker manifest list. */
  top: Descriptor & { body: Buffer }
  isIndex: boolean
  /** Platform manifests; exactly one for a single-platform image. */
  manifests: Manifest[]
  /** Every config and layer, without duplicates. */
  blobs: Descriptor[]
  /** skopeo `dir:` layout holding all of the above. */
  layoutDir: string
}

export const AMD64: Platform = { os: 'linux', architecture: 'amd64' }
export const ARM64: Platform = { os: 'linux', architecture: 'arm64', variant: 'v8' }

export type ImageSpec = {
  /** Short Docker Hub name; the repository is library/<shortName>. */
  shortName: string
  tag: string
  format: Format
  /** One platform for a plain image; two or more make an index (oci) or manifest list (docker). */
  platforms: readonly Platform[]
  /** Random payload size of each generated layer, per platform. */
  layerSizes: readonly number[]
  /** Already generated layers appended to every platform (used for the cached 200 MB layer). */
  extraLayers?: readonly Layer[]
}

export async function createImage(root: string, spec: ImageSpec): Promise<TestImage> {
  const name = `library/${spec.shortName}`
  const layoutDir = join(root, `${spec.shortName}-${spec.tag}`)
  await mkdir(layoutDir, { recursive: true })
  await writeFile(join(layoutDir, 'version'), 'Directory Transport Version: 1.1\n')
  const manifests: Manifest[] = []
  for (const platform of spec.platforms) {
    const layers: Layer[] = []
    for (const size of spec.layerSizes) layers.push(await writeLayer(layoutDir, size, spec.format))
    for (const extra of spec.extraLayers ?? []) layers.push(await adoptLayer(layoutDir, extra))
    manifests.push(await writeManifest(layoutDir, spec.format, platform, layers, spec.platforms.length > 1))
  }
  let top: Descriptor & { body: Buffer }
  const [only] = manifests
  if (manifests.length === 1 && only !== undefined) {
    top = { mediaType: only.mediaType, digest: only.digest, size: only.size, body: only.body }
  } else {
    const mediaType = spec.format === 'oci' ? MEDIA.ociIndex : MEDIA.dockerList
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType,
        manifests: manifests.map((m) => ({
          mediaType: m.mediaType,
          size: m.size,
          digest: m.digest,
          platform: m.platform,
        })),
      }),
    )
    top = { mediaType, digest: sha256(body), size: body.length, body }
  }
  await writeFile(join(layoutDir, 'manifest.json'), top.body)
  const seen = new Map<string, Descriptor>()
  for (const m of manifests) {
    for (const d of [m.config, ...m.layers]) {
      seen.set(d.digest, { mediaType: d.mediaType, digest: d.digest, size: d.size })
    }
  }
  return {
    name,
    tag: spec.tag,
    shortName: spec.shortName,
    top,
    isIndex: manifests.length > 1,
    manifests,
    blobs: [...seen.values()],
    layoutDir,
  }
}

/** The manifest a client on `platform` ends up with (the image itself for a single-platform image). */
export function manifestFor(image: TestImage, platform: Platform = AMD64): Manifest {
  const found = image.manifests.find(
    (m) => m.platform.architecture === platform.architecture && m.platform.os === platform.os,
  )
  if (found === undefined)
    throw new Error(`${image.name}:${image.tag} has no ${platform.architecture} manifest`)
  return found
}

async function writeManifest(
  dir: string,
  format: Format,
  platform: Platform,
  layers: Layer[],
  instance: boolean,
): Promise<Manifest> {
  // A nonce label makes every config, hence every image ID, unique even for identical layer sets.
  const configBody = Buffer.from(
    JSON.stringify({
      architecture: platform.architecture,
      ...(platform.variant === undefined ? {} : { variant: platform.variant }),
      os: platform.os,
      created: new Date().toISOString(),
      config: {
        Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        Cmd: ['/bin/true'],
        Labels: { 'org.pullcache.e2e.nonce': randomBytes(8).toString('hex') },
      },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map((_, i) => ({
        created: new Date().toISOString(),
        created_by: `pullcache e2e layer ${i}`,
      })),
    }),
  )
  const config: Descriptor = {
    mediaType: format === 'oci' ? MEDIA.ociConfig : MEDIA.dockerConfig,
    digest: sha256(configBody),
    size: configBody.length,
  }
  await writeFile(join(dir, hex(config.digest)), configBody)
  const mediaType = format === 'oci' ? MEDIA.ociManifest : MEDIA.dockerManifest
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      config,
      layers: layers.map((l) => ({ mediaType: l.mediaType, size: l.size, digest: l.digest })),
    }),
  )
  const digest = sha256(body)
  // The dir transport looks up platform manifests of a list as <hex>.manifest.json.
  if (instance) await writeFile(join(dir, `${hex(digest)}.manifest.json`), body)
  return { mediaType, digest, size: body.length, body, platform, config, layers }
}

/**
 * A gzipped one-file tar of `size` random bytes, streamed to disk: the uncompressed stream is hashed
 * for the diff ID, the compressed one for the blob digest. Memory stays at one chunk whatever the size.
 */
export async function writeLayer(dir: string, size: number, format: Format, gzipLevel = 6): Promise<Layer> {
  const fileName = `payload-${randomBytes(6).toString('hex')}.bin`
  const diffHash = createHash('sha256')
  const blobHash = createHash('sha256')
  let blobSize = 0
  const temp = join(dir, `.layer-${randomBytes(6).toString('hex')}.tmp`)
  await pipeline(
    Readable.from(tarOneFile(fileName, size)),
    tap((chunk) => diffHash.update(chunk)),
    createGzip({ level: gzipLevel }),
    tap((chunk) => {
      blobHash.update(chunk)
      blobSize += chunk.length
    }),
    createWriteStream(temp),
  )
  const digest = `sha256:${blobHash.digest('hex')}`
  const file = join(dir, hex(digest))
  await rename(temp, file)
  return {
    mediaType: format === 'oci' ? MEDIA.ociLayer : MEDIA.dockerLayer,
    digest,
    size: blobSize,
    diffId: `sha256:${diffHash.digest('hex')}`,
    file,
  }
}

/** Puts an existing layer file into another layout without copying 200 MB when a hard link will do. */
async function adoptLayer(dir: string, layer: Layer): Promise<Layer> {
  const file = join(dir, hex(layer.digest))
  if (!existsSync(file)) {
    try {
      await link(layer.file, file)
    } catch {
      await copyFile(layer.file, file)
    }
  }
  return { ...layer, file }
}

const CHUNK = 1 << 20

/** ustar: 512-byte header, the data, zero padding to 512, then two zero blocks marking the end. */
function* tarOneFile(name: string, size: number): Generator<Buffer> {
  yield tarHeader(name, size)
  for (let left = size; left > 0; left -= CHUNK) yield randomBytes(Math.min(CHUNK, left))
  const padding = (512 - (size % 512)) % 512
  yield Buffer.alloc(padding + 1024)
}

function tarHeader(name: string, size: number): Buffer {
  const header = Buffer.alloc(512)
  const put = (offset: number, length: number, value: string) => header.write(value, offset, length, 'ascii')
  const octal = (offset: number, length: number, value: number) =>
    put(offset, length, `${value.toString(8).padStart(length - 1, '0')}\0`)
  put(0, 100, name)
  octal(100, 8, 0o644)
  octal(108, 8, 0)
  octal(116, 8, 0)
  octal(124, 12, size)
  octal(136, 12, 1_700_000_000)
  put(148, 8, '        ')
  put(156, 1, '0')
  put(257, 6, 'ustar\0')
  put(263, 2, '00')
  put(265, 32, 'root')
  put(297, 32, 'root')
  let sum = 0
  for (const byte of header) sum += byte
  put(148, 8, `${sum.toString(8).padStart(6, '0')}\0 `)
  return header
}

function tap(onChunk: (chunk: Buffer) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      onChunk(chunk)
      callback(null, chunk)
    },
  })
}

export function hex(digest: string): string {
  const [algorithm, encoded] = digest.split(':')
  if (algorithm !== 'sha256' || encoded === undefined || !/^[0-9a-f]{64}$/.test(encoded)) {
    throw new Error(`not a sha256 digest: ${digest}`)
  }
  return encoded
}

// ---------------------------------------------------------------------------------------------
// The 200 MB layer is expensive to make, so it is made once per vitest run and shared by the test
// files that need it. Vitest runs each file in a worker: a forked child (key: the parent, i.e. the
// vitest process) or a worker thread (key: this process). Directories left by runs whose vitest
// process is gone are removed on the next run.

export const BIG_LAYER_BYTES = 200 * 1024 * 1024
const SHARED_PREFIX = 'pce2e-shared-'

export async function sharedBigLayer(format: Format): Promise<Layer> {
  const key = isMainThread ? process.ppid : process.pid
  const dir = join(tmpdir(), `${SHARED_PREFIX}${key}`)
  await removeOrphanedSharedDirs(key)
  await mkdir(dir, { recursive: true })
  const metaPath = join(dir, 'big-layer.json')
  let layer: Layer
  try {
    layer = JSON.parse(await readFile(metaPath, 'utf8')) as Layer
    const info = await stat(layer.file)
    if (info.size !== layer.size) throw new Error('incomplete')
  } catch {
    // Level 0 (stored deflate blocks) is still a valid gzip stream; random bytes do not compress
    // anyway, and it takes a second instead of five on this machine's two cores.
    layer = await writeLayer(dir, BIG_LAYER_BYTES, format, 0)
    await writeFile(`${metaPath}.tmp`, JSON.stringify(layer))
    await rename(`${metaPath}.tmp`, metaPath)
  }
  return { ...layer, mediaType: format === 'oci' ? MEDIA.ociLayer : MEDIA.dockerLayer }
}

async function removeOrphanedSharedDirs(currentKey: number): Promise<void> {
  const entries = await readdir(tmpdir()).catch(() => [] as string[])
  for (const entry of entries) {
    if (!entry.startsWith(SHARED_PREFIX)) continue
    const pid = Number(entry.slice(SHARED_PREFIX.length))
    if (!Number.isInteger(pid) || pid === currentKey || isAlive(pid)) continue
    await removeDir(join(tmpdir(), entry))
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

// ---------------------------------------------------------------------------------------------

export type StandardImages = {
  /** (a) single platform, Docker schema2, three layers. */
  small: TestImage
  /** (b) OCI index, linux/amd64 + linux/arm64, OCI media types. */
  ociIndex: TestImage
  /** (c) Docker manifest list, two platforms, schema2 children. */
  dockerList: TestImage
}

export async function createStandardImages(root: string): Promise<StandardImages> {
  const small = await createImage(root, {
    shortName: 'small',
    tag: '1.0',
    format: 'docker',
    platforms: [AMD64],
    layerSizes: [48 * 1024, 300 * 1024, 1024 * 1024],
  })
  const ociIndex = await createImage(root, {
    shortName: 'multi-oci',
    tag: 'latest',
    format: 'oci',
    platforms: [AMD64, ARM64],
    layerSizes: [64 * 1024, 512 * 1024],
  })
  const dockerList = await createImage(root, {
    shortName: 'multi-docker',
    tag: '2.0',
    format: 'docker',
    platforms: [AMD64, ARM64],
    layerSizes: [200 * 1024, 32 * 1024],
  })
  return { small, ociIndex, dockerList }
}

/** (d) a single-platform image whose only layer is the shared 200 MB one. */
export async function createBigImage(root: string): Promise<TestImage> {
  return createImage(root, {
    shortName: 'big',
    tag: 'latest',
    format: 'docker',
    platforms: [AMD64],
    layerSizes: [],
    extraLayers: [await sharedBigLayer('docker')],
  })
}
