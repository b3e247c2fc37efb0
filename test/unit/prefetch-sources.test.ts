// biome-ignore-all lint/suspicious/noTemplateCurlyInString: Compose variables are the subject here
import { describe, expect, test } from 'vitest'
import {
  interpolate,
  parseDotEnv,
  referencesFromCompose,
  referencesFromKubernetes,
  referencesFromList,
  SourceError,
} from '../../src/prefetch/sources.js'

describe('reference lists', () => {
  test('one per line, comments and blank lines ignored, line numbers kept', () => {
    const text = '# base images\nalpine:3.20\n\n  redis:7   # cache\r\nghcr.io/x/y:z\n#nginx\n'
    expect(referencesFromList(text, 'list.txt')).toEqual([
      { text: 'alpine:3.20', source: 'list.txt:2' },
      { text: 'redis:7', source: 'list.txt:4' },
      { text: 'ghcr.io/x/y:z', source: 'list.txt:5' },
    ])
  })
})

describe('Compose files', () => {
  test('every service image; built services skipped; anchors, merge keys and variables', () => {
    const text = `
x-base: &base
  restart: always
  image: postgres:16
services:
  db:
    <<: *base
  web:
    image: "nginx:\${NGINX_TAG:-1.27}"
  api:
    image: myorg/api:\${API_TAG}
  worker:
    build: ./worker
    image: myorg/worker:dev
  sidecar:
    environment: [A=1]
  cost:
    image: "prices:$$HOME"
`
    const result = referencesFromCompose(text, 'compose.yml', { API_TAG: '2.1' })
    expect(result.found).toEqual([
      { text: 'postgres:16', source: 'compose.yml: service db' },
      { text: 'nginx:1.27', source: 'compose.yml: service web' },
      { text: 'myorg/api:2.1', source: 'compose.yml: service api' },
      { text: 'prices:$HOME', source: 'compose.yml: service cost' },
    ])
    expect(result.skipped).toEqual([
      'compose.yml: service worker: built locally',
      'compose.yml: service sidecar: no image',
    ])
  })

  test('a required variable that is unset makes that reference an error, not the file', () => {
    const result = referencesFromCompose('services:\n  a:\n    image: app:${TAG:?set TAG}\n', 'c.yml', {})
    expect(result.found[0]?.error).toContain('TAG')
  })

  test('not YAML, or not Compose', () => {
    expect(() => referencesFromCompose('services: [', 'c.yml', {})).toThrow(SourceError)
    expect(() => referencesFromCompose('version: "3"\n', 'c.yml', {})).toThrow('no services')
  })

  test('interpolation as Compose does it', () => {
    const env = { SET: 'v', EMPTY: '' }
    expect(
      interpolate('$SET ${SET} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:+alt} ${UNSET+alt} $$SET', env),
    ).toBe('v v d  d alt  $SET')
    expect(interpolate('x${UNSET}y', env)).toBe('xy')
    expect(() => interpolate('${EMPTY:?needed}', env)).toThrow('needed')
    expect(interpolate('${EMPTY?needed}', env)).toBe('')
  })

  test('.env files', () => {
    expect(
      parseDotEnv('# c\nA=1\nexport B = "two words"\nC=\'x # y\'\nD=plain # comment\nbad line\n'),
    ).toEqual({
      A: '1',
      B: 'two words',
      C: 'x # y',
      D: 'plain',
    })
  })
})

describe('Kubernetes manifests', () => {
  test('containers, init and ephemeral containers of every workload kind, across documents', () => {
    const text = `
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: a, image: "pod-main:1"}]
  ephemeralContainers: [{name: debug, image: busybox}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  template:
    spec:
      initContainers: [{name: init, image: "init:1"}]
      containers: [{name: app, image: "deploy:1"}]
---
kind: StatefulSet
metadata: {name: s}
spec: {template: {spec: {containers: [{name: db, image: "sts:1"}]}}}
---
kind: DaemonSet
metadata: {name: ds}
spec: {template: {spec: {containers: [{name: agent, image: "ds:1"}]}}}
---
kind: Job
metadata: {name: j}
spec: {template: {spec: {containers: [{name: once, image: "job:1"}]}}}
---
kind: CronJob
metadata: {name: cj}
spec: {jobTemplate: {spec: {template: {spec: {containers: [{name: tick, image: "cron:1"}]}}}}}
---
kind: Service
metadata: {name: svc}
spec: {ports: [{port: 80}]}
---
# an empty document
---
kind: List
items:
  - kind: Pod
    metadata: {name: listed}
    spec: {containers: [{name: x, image: "listed:1"}]}
`
    const found = referencesFromKubernetes(text, 'k8s.yaml')
    expect(found.map((f) => f.text)).toEqual([
      'pod-main:1',
      'busybox',
      'init:1',
      'deploy:1',
      'sts:1',
      'ds:1',
      'job:1',
      'cron:1',
      'listed:1',
    ])
    expect(found[2]!.source).toBe('k8s.yaml: Deployment d, initContainer init')
    expect(found[1]!.source).toBe('k8s.yaml: Pod p, ephemeralContainer debug')
  })

  test('a broken document is an error naming it', () => {
    expect(() => referencesFromKubernetes('kind: Pod\n---\nkind: [\n', 'k.yaml')).toThrow('document 2')
    expect(referencesFromKubernetes('', 'k.yaml')).toEqual([])
  })
})
