// A real Ceph RADOS Gateway (test/support/ceph-rgw.sh: one monitor, one OSD on memstore, radosgw)
// for one test file: started in beforeAll with its own state dir, stopped and removed in
// afterAll. It is the store with atomic compare-and-swap (PUT If-Match), which Swift's S3 API
// lacks. Each file gets a block of ten ports of 6300-6399 (the script's range): the monitor,
// radosgw, and eight for the OSD, a block picked at random and another tried when the script
// finds a port taken (exit 3), so files run side by side never share a server.

import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { type S3Server, s3ServerFrom, serverPerFile } from './s3-server.js'

const SCRIPT = join(import.meta.dirname, 'ceph-rgw.sh')
const run = promisify(execFile)

export async function startCephRgw(): Promise<S3Server & { stop(): Promise<void> }> {
  const state = await mkdtemp(join(tmpdir(), 'pullcache-ceph-'))
  const env = (extra: Record<string, string> = {}) => ({ ...process.env, CEPH_STATE: state, ...extra })
  const stop = async () => {
    await run('bash', [SCRIPT, 'stop'], { env: env() }).catch(() => {})
    await rm(state, { recursive: true, force: true, maxRetries: 3 })
  }
  const started = Date.now()
  for (let attempt = 0; ; attempt++) {
    const base = 6300 + 10 * Math.floor(Math.random() * 10) // 6300..6390: the block's ten ports
    try {
      const { stdout } = await run('bash', [SCRIPT, 'start'], {
        env: env({
          CEPH_MON_PORT: String(base),
          CEPH_RGW_PORT: String(base + 1),
          CEPH_OSD_PORTS: `${base + 2}-${base + 9}`,
          // In RAM, a new cluster at every start: nothing to keep, and 3 s instead of 6.
          CEPH_OSD_STORE: 'memstore',
          CEPH_OSD_SIZE_GB: '1',
          CEPH_RGW_DEBUG: '0',
        }),
      })
      return { ...s3ServerFrom(stdout, started), stop }
    } catch (err) {
      // Exit 3: a port was taken (another file's server, or anything else); try other ports.
      // The monitor's port is fixed when a state dir is created, so a retry starts afresh.
      if ((err as { code?: unknown }).code === 3 && attempt < 10) {
        await run('bash', [SCRIPT, 'stop'], { env: env() }).catch(() => {})
        await rm(join(state, 'created'), { force: true })
        continue
      }
      await stop()
      throw err
    }
  }
}

/** One Ceph RGW for the test file that calls this (at its top level). */
export function useCephRgw(): { readonly server: S3Server } {
  return serverPerFile(startCephRgw, 'Ceph RGW', 120_000)
}
