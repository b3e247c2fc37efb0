// Where a blob redirect may take pullcache, and the following of it. A registry sends blob GETs
// to storage (Docker Hub to its CDN, others to S3 or GCS) with a 307; the target is whatever the
// registry wrote, so a registry, or anyone who can make it answer, could point pullcache at the
// network it runs in. So a redirect is followed only to https, and never to a loopback, private
// or link-local address, unless the upstream is itself on such an address (a registry on the
// company network, or on loopback in tests): then http within those networks is allowed too.
// Names are checked where they are resolved, at connect (redirectLookup), so a name that
// resolves to a private address is refused as its literal address would be, with no connection
// made. Our credentials go to the upstream origin only: a storage URL carries its own signature.

import { lookup as dnsLookup, type LookupAddress } from 'node:dns'
import { BlockList, isIP, type LookupFunction } from 'node:net'
import { UpstreamError } from '../errors.js'
import { header, isRedirect, type Response } from './response.js'

const MAX_REDIRECTS = 5

/** Loopback, private, link-local and other addresses that are not the public internet's. */
const LOCAL = new BlockList()
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.168.0.0', 16],
] as const)
  LOCAL.addSubnet(net, prefix, 'ipv4')
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['fc00::', 7],
  ['fe80::', 10],
] as const)
  LOCAL.addSubnet(net, prefix, 'ipv6')

/** Whether an address (v4, v6, or v4-mapped v6) is loopback, private or link-local. */
export function isLocalAddress(address: string): boolean {
  const bare = address.replace(/^\[|\]$/g, '')
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare)
  if (mapped) return LOCAL.check(mapped[1]!, 'ipv4')
  const family = isIP(bare)
  if (family === 4) return LOCAL.check(bare, 'ipv4')
  if (family === 6) return LOCAL.check(bare, 'ipv6')
  return false
}

/** Names that always mean this machine, whatever DNS says. */
function isLocalName(hostname: string): boolean {
  const name = hostname.toLowerCase().replace(/\.$/, '')
  return name === 'localhost' || name.endsWith('.localhost')
}

/**
 * Why pullcache will not follow a redirect to `target`, or undefined when it may. `localUpstream`:
 * the upstream itself is on a loopback or private address. A name (not an address) that passes
 * here is checked again once resolved (redirectLookup).
 */
export function redirectRefusal(target: URL, localUpstream: boolean): string | undefined {
  if (target.protocol !== 'https:' && target.protocol !== 'http:') {
    return `a redirect to a non-http URL (${target.protocol})`
  }
  const local = isLocalName(target.hostname) || isLocalAddress(target.hostname)
  if (localUpstream) {
    // Within the upstream's own networks plain http is what such registries use.
    if (target.protocol === 'http:' && !local && isIP(target.hostname.replace(/^\[|\]$/g, '')) !== 0) {
      return `a redirect to http on a public address (${target.host})`
    }
    return undefined
  }
  if (target.protocol !== 'https:') return `a redirect to http (${target.host}): only https is followed`
  if (local) return `a redirect to a loopback or private address (${target.host})`
  return undefined
}

/**
 * A `lookup` for the connections redirects go out on: names resolving to a loopback or private
 * address are refused, before any connection, unless `allowLocal()` (the upstream is local).
 */
export function redirectLookup(allowLocal: () => boolean): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, [])
      const local = allowLocal() ? undefined : addresses.find((a) => isLocalAddress(a.address))
      if (local !== undefined) {
        const refused = new UpstreamError(
          'SERVER',
          `refused a redirect to ${hostname}: it resolves to a loopback or private address (${local.address})`,
        )
        return callback(refused as unknown as NodeJS.ErrnoException, [])
      }
      if (options.all) return callback(null, addresses)
      const first = addresses[0]
      if (first === undefined) {
        return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), [])
      }
      callback(null, first.address, first.family)
    })
  }
}

/**
 * Whether an upstream at this origin is on a loopback or private address; undefined when its
 * name cannot be resolved now (the caller treats that as public, the stricter rule, and asks
 * again next time).
 */
export async function isLocalOrigin(origin: URL): Promise<boolean | undefined> {
  const host = origin.hostname.replace(/^\[|\]$/g, '')
  if (isLocalName(host) || isLocalAddress(host)) return true
  if (isIP(host) !== 0) return false
  try {
    const addresses = await new Promise<LookupAddress[]>((resolve, reject) =>
      dnsLookup(host, { all: true }, (err, found) => (err ? reject(err) : resolve(found))),
    )
    return addresses.length > 0 && addresses.every((a) => isLocalAddress(a.address))
  } catch {
    return undefined
  }
}

export interface RedirectHops {
  origin: URL
  /** Whether the upstream is on a loopback or private address. */
  localUpstream: () => Promise<boolean>
  /** A request to the upstream origin, with its credentials. */
  toOrigin: (pathAndQuery: string) => Promise<Response>
  /** A request elsewhere, without credentials, on the guarded connections. */
  elsewhere: (url: URL) => Promise<Response>
}

/** Follows redirects from `first` to the answer; a refused one is an UpstreamError, unsent. */
export async function followRedirects(first: Response, hops: RedirectHops): Promise<Response> {
  let res = first
  let url = new URL(hops.origin)
  for (let hop = 0; isRedirect(res.statusCode); hop++) {
    const location = header(res.headers, 'location')
    await res.body.dump()
    if (location === undefined || hop >= MAX_REDIRECTS) {
      throw new UpstreamError('SERVER', `redirect without Location or more than ${MAX_REDIRECTS} redirects`)
    }
    try {
      url = new URL(location, url)
    } catch (err) {
      throw new UpstreamError('SERVER', `redirect to a bad Location: ${location}`, { cause: err })
    }
    if (url.origin === hops.origin.origin) {
      res = await hops.toOrigin(url.pathname + url.search)
      continue
    }
    const refusal = redirectRefusal(url, await hops.localUpstream())
    if (refusal !== undefined) throw new UpstreamError('SERVER', `refused ${refusal}`)
    res = await hops.elsewhere(url)
  }
  return res
}
