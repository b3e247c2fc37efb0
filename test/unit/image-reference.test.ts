import { describe, expect, test } from 'vitest'
import { formatPlatform, parsePlatform, parsePlatforms, pickPlatform } from '../../src/prefetch/platform.js'
import { InvalidReference, isDockerHubReference, parseImageReference } from '../../src/prefetch/reference.js'

const D = `sha256:${'ab'.repeat(32)}`

describe('image references are normalised as Docker does', () => {
  test.each([
    ['alpine', 'docker.io/library/alpine:latest'],
    ['alpine:3.20', 'docker.io/library/alpine:3.20'],
    ['library/alpine', 'docker.io/library/alpine:latest'],
    ['docker.io/alpine', 'docker.io/library/alpine:latest'],
    ['index.docker.io/library/alpine:edge', 'docker.io/library/alpine:edge'],
    ['registry-1.docker.io/user/app:1', 'docker.io/user/app:1'],
    ['user/app:1', 'docker.io/user/app:1'],
    ['user/sub/app', 'docker.io/user/sub/app:latest'],
    ['ghcr.io/x/y:z', 'ghcr.io/x/y:z'],
    ['localhost/app', 'localhost/app:latest'],
    ['localhost:5000/app:v1', 'localhost:5000/app:v1'],
    ['quay.io/coreos/etcd', 'quay.io/coreos/etcd:latest'],
    [`redis@${D}`, `docker.io/library/redis@${D}`],
    [`redis:7@${D}`, `docker.io/library/redis:7@${D}`],
    ['  nginx:1.27-alpine  ', 'docker.io/library/nginx:1.27-alpine'],
    ['a_b__c-d---e/x.y', 'docker.io/a_b__c-d---e/x.y:latest'],
  ])('%s -> %s', (input, canonical) => {
    expect(parseImageReference(input).canonical).toBe(canonical)
  })

  test('parts', () => {
    expect(parseImageReference(`user/app:1@${D}`)).toEqual({
      domain: 'docker.io',
      path: 'user/app',
      tag: '1',
      digest: D,
      canonical: `docker.io/user/app:1@${D}`,
    })
    expect(parseImageReference(`ghcr.io/x/y@${D}`).tag).toBeNull()
  })

  test('only Docker Hub references go through pullcache', () => {
    expect(isDockerHubReference(parseImageReference('alpine'))).toBe(true)
    expect(isDockerHubReference(parseImageReference('index.docker.io/x/y'))).toBe(true)
    expect(isDockerHubReference(parseImageReference('ghcr.io/x/y'))).toBe(false)
    expect(isDockerHubReference(parseImageReference('localhost:5000/x'))).toBe(false)
  })

  test.each([
    ['', 'empty'],
    ['Alpine', 'lowercase'],
    ['alpine:', 'invalid tag'],
    ['alpine:-x', 'invalid tag'],
    // The OCI image spec's digest grammar: a short sha256 is well-formed but not a sha256 digest;
    // an algorithm in capitals is not a digest at all.
    ['alpine@sha256:abc', 'lowercase hex'],
    [`alpine@SHA256:${'a'.repeat(64)}`, 'malformed digest'],
    [`alpine@sha512:${'a'.repeat(128)}`, 'only sha256'],
    [`alpine@sha256:${'A'.repeat(64)}`, 'lowercase hex'],
    ['ab'.repeat(32), 'image ID'],
    ['user//app', 'invalid name component'],
    ['-x/y', 'invalid name component'],
    ['ex_ample.com:x/y', 'invalid registry'],
    [`${'a'.repeat(256)}`, 'longer than 255'],
  ])('%j is refused (%s)', (input, reason) => {
    expect(() => parseImageReference(input)).toThrow(InvalidReference)
    expect(() => parseImageReference(input)).toThrow(reason)
  })
})

describe('platforms', () => {
  test('parsing and normalisation', () => {
    expect(formatPlatform(parsePlatform('linux/amd64'))).toBe('linux/amd64')
    expect(formatPlatform(parsePlatform('linux/x86_64'))).toBe('linux/amd64')
    expect(formatPlatform(parsePlatform('linux/aarch64'))).toBe('linux/arm64')
    expect(formatPlatform(parsePlatform('linux/arm64/v8'))).toBe('linux/arm64')
    expect(formatPlatform(parsePlatform('linux/arm'))).toBe('linux/arm/v7')
    expect(formatPlatform(parsePlatform('Linux/ARM/v6'))).toBe('linux/arm/v6')
    expect(parsePlatforms('linux/amd64, linux/arm64,linux/amd64').map(formatPlatform)).toEqual([
      'linux/amd64',
      'linux/arm64',
    ])
    for (const bad of ['amd64', 'linux/', 'linux/arm/v7/x', '', ','])
      expect(() => parsePlatforms(bad)).toThrow()
  })

  test('picking the entry of an index', () => {
    const entries = [
      { id: 'amd64', p: { os: 'linux', architecture: 'amd64', variant: '' } },
      { id: 'amd64v3', p: { os: 'linux', architecture: 'amd64', variant: 'v3' } },
      { id: 'armv6', p: { os: 'linux', architecture: 'arm', variant: 'v6' } },
      { id: 'armv7', p: { os: 'linux', architecture: 'arm', variant: 'v7' } },
      { id: 'arm64', p: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { id: 'attestation', p: { os: 'unknown', architecture: 'unknown', variant: '' } },
      { id: 'none', p: null },
    ]
    const pick = (text: string) => pickPlatform(entries, (e) => e.p, parsePlatform(text))?.id
    expect(pick('linux/amd64')).toBe('amd64')
    expect(pick('linux/amd64/v3')).toBe('amd64v3')
    expect(pick('linux/arm64')).toBe('arm64')
    expect(pick('linux/arm')).toBe('armv7')
    expect(pick('linux/arm/v6')).toBe('armv6')
    expect(pick('linux/arm/v5')).toBeUndefined()
    expect(pick('windows/amd64')).toBeUndefined()
    // No variant asked: the first of that architecture when none has the default.
    expect(pickPlatform([entries[1]!], (e) => e.p, parsePlatform('linux/amd64'))?.id).toBe('amd64v3')
  })
})
