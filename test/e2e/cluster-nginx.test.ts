// Three pullcache nodes as one cache behind nginx, round robin, with conf/nginx-cluster.conf as
// the README ships it (only the addresses are this test's), sharing one S3 bucket (a real S3
// server: test/support/s3-server.sh). Real clients pull through nginx: skopeo, containerd's ctr
// and dockerd. Whichever node a request lands on, each blob reaches the registry once for the
// whole cluster: its owner fetches it, the other nodes relay, and the bucket ends up holding
// every blob, verified, so a node that joins with an empty disk serves them without the registry.
import { createHash } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GetObjectCommand } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bucketKey } from '../../src/store/shared-tier.js'
import { freePort, freePorts } from '../support/free-ports.js'
import { useS3Server } from '../support/s3-server.js'
import { waitFor } from '../support/wait-for.js'
import { type Containerd, startPrivateContainerd } from './containerd.js'
import { type Dockerd, startDockerd } from './dockerd.js'
import { AMD64, createImage, manifestFor, type TestImage } from './images.js'
import { type Daemon, makeTempDir, removeDir, requireBinary, startDaemon } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { createSkopeo, layoutProblems } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

const NGINX_CONF = fileURLToPath(new URL('../../conf/nginx-cluster.conf', import.meta.url))
const SECRET = 'e2e-cluster-secret-6f0d2a'
const BUCKET = 'pullcache-e2e-cluster'

const s3 = useS3Server()

let work: string
let upstream: Upstream
let nodes: Pullcache[] = []
let nginx: Daemon
let mirror: string
let images: TestImage[]

/** The shipped config with this test's addresses: the nodes' ports and a loopback listener. */
async function nginxConfig(dir: string, port: number, nodePorts: number[]): Promise<string> {
  let shipped = await readFile(NGINX_CONF, 'utf8')
  const servers = shipped.match(/^ {4}server 10\.0\.0\.\d+:5000 /gm) ?? []
  if (servers.length !== nodePorts.length)
    throw new Error(`${NGINX_CONF}: expected ${nodePorts.length} servers`)
  nodePorts.forEach((p, i) => {
    shipped = shipped.replace(servers[i]!, `    server 127.0.0.1:${p} `)
  })
  shipped = shipped.replace(/^ {4}listen 5000;$/m, `    listen 127.0.0.1:${port};`)
  const root = process.getuid?.() === 0 ? 'user root;\n' : ''
  return `${root}worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${shipped}
}
`
}

beforeAll(async () => {
  work = await makeTempDir('cluster')
  upstream = await startUpstream()
  const skopeo = await createSkopeo(join(work, 'skopeo'))
  images = []
  for (const [shortName, sizes] of [
    ['spread', [3 * 1024 * 1024, 700 * 1024, 90 * 1024]],
    ['second', [1024 * 1024, 64 * 1024]],
  ] as const) {
    const image = await createImage(join(work, 'images'), {
      shortName,
      tag: 'v1',
      format: 'docker',
      platforms: [AMD64],
      layerSizes: sizes,
    })
    await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
    images.push(image)
  }

  const ports = await freePorts(3)
  const urls = ports.map((p) => `http://127.0.0.1:${p}`)
  for (const [i, port] of ports.entries()) {
    nodes.push(
      await startPullcache({
        upstream: upstream.url,
        env: {
          PULLCACHE_LISTEN: `127.0.0.1:${port}`,
          PULLCACHE_NODE_URL: urls[i]!,
          PULLCACHE_PEERS: urls.join(','),
          PULLCACHE_CLUSTER_SECRET: SECRET,
          ...s3.server.env(BUCKET),
        },
      }),
    )
  }

  const nginxDir = join(work, 'nginx')
  const nginxPort = await freePort()
  await writeFile(join(work, 'nginx.conf'), await nginxConfig(nginxDir, nginxPort, ports))
  await mkdir(nginxDir, { recursive: true })
  nginx = startDaemon(requireBinary('nginx'), [
    '-p',
    nginxDir,
    '-c',
    join(work, 'nginx.conf'),
    '-g',
    'daemon off;',
  ])
  mirror = `http://127.0.0.1:${nginxPort}`
  await waitFor(
    async () => {
      if (!nginx.isRunning()) throw new Error(`nginx exited:\n${nginx.tail()}`)
      const res = await fetch(`${mirror}/v2/`, { signal: AbortSignal.timeout(1000) }).catch(() => undefined)
      await res?.body?.cancel()
      return res?.status === 200 ? true : undefined
    },
    { timeoutMs: 15_000, what: 'nginx in front of the nodes' },
  )
})

afterAll(async () => {
  await nginx?.stop(5000)
  for (const node of nodes) await node.close()
  nodes = []
  await upstream?.close()
  await removeDir(work)
})

/** Blob GETs the registry answered with content (not the 401 before a token). */
function downloads(digest: string): number {
  return upstream.proxy.count({ method: 'GET', kind: 'blob', reference: digest, status: 'success' })
}

describe('three nodes behind nginx, round robin', () => {
  it('skopeo pulls through nginx; every node answers some requests; each blob reaches the registry once', async () => {
    const image = images[0]!
    const marks = nodes.map((n) => n.mark())
    const layout = await createSkopeo(join(work, 'skopeo-pull')).then((s) =>
      s.pull(`${mirror.slice('http://'.length)}/${image.name}:v1`, join(work, 'pulled')),
    )
    expect(layoutProblems(layout, image, 'amd64')).toEqual([])
    for (const blob of image.blobs) expect(downloads(blob.digest), blob.digest).toBe(1)
    for (const [i, node] of nodes.entries()) {
      await node.settle()
      const served = node.accessLogSince(marks[i]!).filter((l) => l.path.startsWith(`/v2/${image.name}/`))
      expect(served.length, `node ${i}`).toBeGreaterThan(0)
    }
  })

  describe('containerd (ctr)', () => {
    let containerd: Containerd
    beforeAll(async () => {
      containerd = await startPrivateContainerd()
      await containerd.setMirror(mirror)
    })
    afterAll(async () => {
      await containerd?.close()
    })

    it('pulls through nginx, with no more registry downloads than one per blob', async () => {
      const image = images[1]!
      const ref = `docker.io/${image.name}:v1`
      const result = await containerd.pull(ref, { namespace: 'pce2e-cluster', platform: 'linux/amd64' })
      expect(result.code, `${result.stdout.slice(-2000)}\n${result.stderr.slice(-2000)}`).toBe(0)
      expect((await containerd.images('pce2e-cluster')).find((i) => i.ref === ref)?.digest).toBe(
        image.top.digest,
      )
      for (const blob of image.blobs) expect(downloads(blob.digest), blob.digest).toBe(1)
    })
  })

  describe('dockerd', () => {
    let dockerd: Dockerd
    beforeAll(async () => {
      dockerd = await startDockerd({ mirror })
    })
    afterAll(async () => {
      await dockerd?.close()
    })

    it('pulls both images through nginx: warm in the cluster, nothing new from the registry', async () => {
      upstream.proxy.reset()
      for (const image of images) {
        const ref = `${image.shortName}:v1`
        const result = await dockerd.pull(ref)
        expect(result.code, `${result.stderr}\n${dockerd.logs().slice(-20).join('\n')}`).toBe(0)
        expect((await dockerd.inspectImage(ref)).Id).toBe(manifestFor(image).config.digest)
      }
      expect(upstream.proxy.count({ kind: 'blob', status: 'success' }), upstream.proxy.describe()).toBe(0)
    })
  })

  it('the bucket holds every blob the cluster fetched, verified; a new node with an empty disk serves them', async () => {
    const { server } = s3
    const client = server.client()
    try {
      for (const blob of images.flatMap((i) => i.blobs)) {
        // Published behind the clients, after the local commit: it may land a moment later.
        const bytes = await waitFor(
          () =>
            client
              .send(new GetObjectCommand({ Bucket: BUCKET, Key: bucketKey('', blob.digest) }))
              .then(async (res) => Buffer.from((await res.Body?.transformToByteArray()) ?? []))
              .catch(() => undefined),
          { timeoutMs: 20_000, what: `${blob.digest} in the bucket` },
        )
        expect(`sha256:${createHash('sha256').update(bytes).digest('hex')}`).toBe(blob.digest)
      }
    } finally {
      client.destroy()
    }

    const fresh = await startPullcache({ upstream: upstream.url, env: s3.server.env(BUCKET) })
    try {
      upstream.proxy.reset()
      const image = images[0]!
      const layout = await createSkopeo(join(work, 'skopeo-fresh')).then((s) =>
        s.pull(`${fresh.url.slice('http://'.length)}/${image.name}:v1`, join(work, 'pulled-fresh')),
      )
      expect(layoutProblems(layout, image, 'amd64')).toEqual([])
      expect(upstream.proxy.count({ kind: 'blob', status: 'success' }), upstream.proxy.describe()).toBe(0)
    } finally {
      await fresh.close()
    }
  })
})
