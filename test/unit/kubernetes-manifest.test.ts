// conf/kubernetes/pullcache.yaml is what operators apply: every pullcache variable it sets must
// be one pullcache reads, and together they must load as the cluster the file describes.
import { readFileSync } from 'node:fs'
import { describe, expect, test } from 'vitest'
import { parseAllDocuments } from 'yaml'
import { DnsMembers } from '../../src/cluster/dns-members.js'
import { loadConfig } from '../../src/config.js'

const MANIFEST = new URL('../../conf/kubernetes/pullcache.yaml', import.meta.url)

type EnvVar = { name: string; value?: string; valueFrom?: unknown }
/** As much of a manifest as the checks read. */
interface Doc {
  kind: string
  metadata: { name: string }
  spec: {
    type?: string
    clusterIP?: string
    serviceName?: string
    replicas?: number
    template?: { spec: { containers: { env: EnvVar[]; volumeMounts: { mountPath: string }[] }[] } }
  }
}

describe('conf/kubernetes/pullcache.yaml', () => {
  const docs = parseAllDocuments(readFileSync(MANIFEST, 'utf8')).map((d) => d.toJS() as Doc)
  const set = docs.find((d) => d.kind === 'StatefulSet')!
  const container = set.spec.template!.spec.containers[0]!
  const env = container.env

  test('a headless Service for the nodes and a Service for the container runtimes', () => {
    const services = docs.filter((d) => d.kind === 'Service')
    expect(services.find((s) => s.metadata.name === set.spec.serviceName)?.spec.clusterIP).toBe('None')
    expect(services.some((s) => s.spec.type === 'NodePort')).toBe(true)
  })

  test('its environment loads as a node that finds the others through the headless Service, as pod 1 sees it', async () => {
    const pods = ['10.1.0.4', '10.1.0.5', '10.1.0.6']
    const pod: Record<string, string> = { POD_IP: pods[1]!, POD_NAMESPACE: 'mirrors' }
    const values: Record<string, string> = { PULLCACHE_CLUSTER_SECRET: 'from-the-secret' }
    for (const v of env) {
      if (v.value === undefined) continue
      values[v.name] = v.value.replace(/\$\((\w+)\)/g, (_, name: string) => pod[name] ?? values[name] ?? '')
    }
    const config = loadConfig({ env: values })
    expect(config.cluster.node_url).toBe('http://10.1.0.5:5000')
    expect(config.cluster.peers).toEqual([])
    // The name is the headless Service's, in the pod's namespace, at the port node_url has.
    const headless = docs.find((d) => d.kind === 'Service' && d.spec.clusterIP === 'None')!
    expect(config.cluster.peers_dns).toBe(`http://${headless.metadata.name}.mirrors.svc.cluster.local:5000`)
    // Resolved to the pods' IPs, the members are every pod, this one named as it names itself.
    const resolved: string[] = []
    const dns = new DnsMembers(config.cluster.peers_dns!, async (host) => {
      resolved.push(host)
      return pods.slice(0, set.spec.replicas).map((address) => ({ address, family: 4 }))
    })
    const members = await dns.discover()
    expect(resolved).toEqual([`${headless.metadata.name}.mirrors.svc.cluster.local`])
    expect(members).toHaveLength(set.spec.replicas ?? 1)
    expect(members).toContain(config.cluster.node_url)
    expect(config.data_dir).toBe(container.volumeMounts[0]?.mountPath)
  })
})
