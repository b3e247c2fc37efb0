// The setup the access tests share: client accounts in an htpasswd file made by the real
// `htpasswd -B` (the tool operators use), a private image that only the upstream's puller account
// may read, and pullcache holding that account with the client accounts switched on.
import { join } from 'node:path'
import { AMD64, createImage, type TestImage } from './images.js'
import { requireBinary, run } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import type { Creds } from './skopeo.js'
import type { Upstream } from './upstream.js'

/** Runs the real `htpasswd` with these arguments (e.g. `-B -b FILE USER PASS`). */
export function htpasswd(args: readonly string[]): Promise<unknown> {
  return run(requireBinary('htpasswd'), args)
}

/** A new htpasswd file in `dir` with one bcrypt account; its path. */
export async function writeHtpasswd(dir: string, creds: Creds): Promise<string> {
  const file = join(dir, 'htpasswd')
  await htpasswd(['-c', '-B', '-b', file, creds.username, creds.password])
  return file
}

/** A small single-platform image named `secret:v1`, for a repository upstream keeps private. */
export function createSecretImage(imagesDir: string, layerSizes: number[]): Promise<TestImage> {
  return createImage(imagesDir, {
    shortName: 'secret',
    tag: 'v1',
    format: 'docker',
    platforms: [AMD64],
    layerSizes,
  })
}

/** pullcache pulling as the upstream's puller account, with client accounts from `htpasswdFile`. */
export function startAccessMirror(upstream: Upstream, htpasswdFile: string): Promise<Pullcache> {
  return startPullcache({
    upstream: upstream.url,
    username: upstream.puller.username,
    password: upstream.puller.password,
    env: { PULLCACHE_AUTH_HTPASSWD: htpasswdFile },
  })
}
