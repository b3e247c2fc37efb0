import { describe, expect, test } from 'vitest'
import { RegistryError } from '../../src/errors.js'
import { parseDigest, parseName, parseRange, parseReference } from '../../src/http/reference.js'

function code(fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (err) {
    return err instanceof RegistryError ? err.code : `not a RegistryError: ${err}`
  }
  return undefined
}

describe('names, references and ranges', () => {
  test('Docker Hub short names normalise to library/', () => {
    expect(parseName('alpine', true)).toEqual({ client: 'alpine', upstream: 'library/alpine' })
    expect(parseName('library/alpine', true).upstream).toBe('library/alpine')
    expect(parseName('bitnami/redis', true).upstream).toBe('bitnami/redis')
    expect(parseName('alpine', false).upstream).toBe('alpine')
  })

  test('the OCI name grammar is enforced', () => {
    for (const ok of ['a', 'a/b/c', 'a-b', 'a__b', 'a.b', 'a---b', '0x/y'])
      expect(code(() => parseName(ok, true))).toBeUndefined()
    for (const bad of [
      '',
      'A',
      'a/',
      '/a',
      'a//b',
      '..',
      'a/../b',
      '-a',
      'a_',
      'a%2fb',
      'a b',
      'a\0b',
      'x'.repeat(256),
    ]) {
      expect(
        code(() => parseName(bad, true)),
        bad,
      ).toBe('NAME_INVALID')
    }
  })

  test('tags and digests', () => {
    expect(parseReference('latest')).toEqual({ kind: 'tag', tag: 'latest' })
    expect(parseReference(`sha256:${'0'.repeat(64)}`)).toEqual({
      kind: 'digest',
      digest: `sha256:${'0'.repeat(64)}`,
    })
    expect(code(() => parseReference('.hidden'))).toBe('TAG_INVALID')
    expect(code(() => parseReference(`sha256:${'A'.repeat(64)}`))).toBe('DIGEST_INVALID')
    expect(code(() => parseDigest(`sha512:${'0'.repeat(128)}`, 'BLOB_UNKNOWN'))).toBe('BLOB_UNKNOWN')
    expect(code(() => parseDigest('sha256:../../x', 'BLOB_UNKNOWN'))).toBe('DIGEST_INVALID')
  })

  test('ranges: single, open, suffix; multi-range and other units mean the whole body', () => {
    expect(parseRange(undefined, 100)).toBeUndefined()
    expect(parseRange('bytes=0-9', 100)).toEqual({ start: 0, end: 9 })
    expect(parseRange('bytes=90-', 100)).toEqual({ start: 90, end: 99 })
    expect(parseRange('bytes=90-1000', 100)).toEqual({ start: 90, end: 99 })
    expect(parseRange('bytes=-10', 100)).toEqual({ start: 90, end: 99 })
    expect(parseRange('bytes=-1000', 100)).toEqual({ start: 0, end: 99 })
    expect(parseRange('bytes=0-1,5-6', 100)).toBeUndefined()
    expect(parseRange('items=0-1', 100)).toBeUndefined()
    expect(code(() => parseRange('bytes=100-', 100))).toBe('RANGE_INVALID')
    expect(code(() => parseRange('bytes=5-4', 100))).toBe('RANGE_INVALID')
    expect(code(() => parseRange('bytes=x-y', 100))).toBe('RANGE_INVALID')
  })
})
