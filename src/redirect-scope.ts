// Where a client's credentials go when it follows a redirect. Go's HTTP client (dockerd,
// containerd, skopeo and podman all use it) keeps Authorization, Cookie and WWW-Authenticate on
// a redirect when the new host is the old one or a subdomain of it, ports aside (net/http
// shouldCopyHeaderOnRedirect; moby#50065 is that rule leaking registry credentials). A client
// that signed in to pullcache and is sent to a presigned bucket URL on such a host would hand
// its password to the bucket, and the bucket would refuse the request anyway: a presigned URL
// and an Authorization header are two ways to sign in, and S3 accepts one.
//
// So the bucket's public endpoint must be on a host of its own. The config refuses one that is
// the host of this node's own URL (cluster.node_url, the one name of the mirror known before a
// request comes) or under it; the blob route checks each request's Host as well, and does not
// redirect a request that carries credentials to a host they would follow it to.

/** Go's isDomainOrSubdomain: `host` is `parent`, or a name under it. Hostnames, no ports. */
export function sameOrSubdomain(host: string, parent: string): boolean {
  const h = stripBrackets(host.toLowerCase())
  const p = stripBrackets(parent.toLowerCase())
  if (h === p) return true
  // An IPv6 address (or a zone) is no domain: only equality counts.
  if (/[:%]/.test(h)) return false
  return h.endsWith(`.${p}`)
}

function stripBrackets(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
}

/** The hostname of a Host header (`name:port`, `[v6]:port`), or undefined when there is none. */
export function hostOfHeader(header: string | undefined): string | undefined {
  if (header === undefined || header === '') return undefined
  try {
    return new URL(`http://${header}`).hostname
  } catch {
    return undefined
  }
}

/**
 * The config's problem with redirects, if it has one: a public endpoint (or, without one, the
 * endpoint) on the host of this node's own URL or under it. Looks at the raw values, as the
 * schema's final check does, so it runs even when other keys are wrong.
 */
export function redirectLeak(config: unknown): { path: (string | number)[]; message: string } | undefined {
  const c = config as {
    storage?: { s3?: { endpoint?: unknown; redirect?: { enabled?: unknown; public_endpoint?: unknown } } }
    cluster?: { node_url?: unknown }
  }
  const s3 = c.storage?.s3
  if (s3?.redirect?.enabled !== true) return undefined
  const nodeUrl = c.cluster?.node_url
  if (typeof nodeUrl !== 'string') return undefined
  const given = typeof s3.redirect.public_endpoint === 'string'
  const target = given ? s3.redirect.public_endpoint : s3.endpoint
  if (typeof target !== 'string') return undefined
  let bucketHost: string
  let nodeHost: string
  try {
    bucketHost = new URL(target).hostname
    nodeHost = new URL(nodeUrl).hostname
  } catch {
    return undefined
  }
  if (!sameOrSubdomain(bucketHost, nodeHost)) return undefined
  return {
    path: ['storage', 's3', given ? 'redirect' : 'endpoint', ...(given ? ['public_endpoint'] : [])],
    message:
      `clients would be sent to ${bucketHost}, which is this node's host (cluster.node_url) or under it: ` +
      'clients keep their credentials for such a host on a redirect and would send them to the bucket; ' +
      'give the bucket a host of its own (storage.s3.redirect.public_endpoint)',
  }
}
