// Ports the OS has free now, for pullcache nodes that must know each other's URLs before any of
// them starts (cluster.node_url, cluster.peers). Each is bound on loopback and released at once.

import { createServer, type Server } from 'node:net'

export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<Server>((resolve) => {
          const s = createServer()
          s.listen(0, '127.0.0.1', () => resolve(s))
        }),
    ),
  )
  const ports = servers.map((s) => (s.address() as { port: number }).port)
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
  return ports
}
