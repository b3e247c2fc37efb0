// Ports for servers that must be told their port before they start: pullcache nodes that list
// each other (cluster.node_url, cluster.peers), nginx, distribution, a node restarted on its port.
//
// A port the OS hands out for port 0 is drawn from its ephemeral range, the same range it draws
// from for every other test's port-0 listener and every outgoing connection. Released and given
// to a server that binds it a second later, it can be taken in between: on a busy two-core CI run
// a node failed to start with EADDRINUSE exactly so. The OS never hands out a port below that
// range by itself, so the ports here come from below it, each checked free by binding it on
// loopback and released at once. Only another explicit bind could take one in between, and the
// ports are drawn at random from thousands, never twice by one test process.

import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'

const LOWEST = 10_000
const ATTEMPTS = 200

/** Where the OS's ephemeral range starts. */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0])
    if (Number.isInteger(low) && low > 0) return low
  } catch {}
  return 32_768
}

const handedOut = new Set<number>()

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen({ port, host: '127.0.0.1', exclusive: true }, () => server.close(() => resolve(true)))
  })
}

/** One port no one holds now, outside the range the OS hands out by itself. */
export async function freePort(): Promise<number> {
  const low = ephemeralLow()
  const top = low - 1
  if (top - LOWEST < 1000)
    throw new Error(`the ephemeral range starts at ${low}: too few ports below it for tests`)
  for (let i = 0; i < ATTEMPTS; i++) {
    const port = LOWEST + Math.floor(Math.random() * (top - LOWEST + 1))
    if (handedOut.has(port)) continue
    handedOut.add(port)
    if (await bindable(port)) return port
  }
  throw new Error(`no free port below ${low} on 127.0.0.1 after ${ATTEMPTS} tries`)
}

export async function freePorts(n: number): Promise<number[]> {
  const ports: number[] = []
  for (let i = 0; i < n; i++) ports.push(await freePort())
  return ports
}
