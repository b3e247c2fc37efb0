// The error vocabulary: one status per OCI code, a stable code on every error class, and one
// mapping from network errors to upstream failures.

import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { describe, expect, expectTypeOf, test } from 'vitest'
import { CliExit } from '../../src/cli/args.js'
import { ConfigError } from '../../src/config.js'
import {
  isNetworkError,
  networkFailure,
  OCI_ERRORS,
  type OciCode,
  RegistryError,
  UpstreamError,
} from '../../src/errors.js'
import { HtpasswdError } from '../../src/http/access.js'
import { Fill } from '../../src/mirror/blob-fill.js'
import { InvalidPlatform } from '../../src/prefetch/platform.js'
import { PullError } from '../../src/prefetch/puller.js'
import { InvalidReference } from '../../src/prefetch/reference.js'
import { SourceError } from '../../src/prefetch/sources.js'
import { ArchiveError } from '../../src/store/archive.js'
import { BlobMismatch } from '../../src/store/blob-storage.js'
import { BlobStore } from '../../src/store/blob-store.js'
import { IndexDb } from '../../src/store/index-db.js'
import { Store } from '../../src/store/store.js'
import { StoreLocked } from '../../src/store/store-lock.js'
import { TlsError } from '../../src/tls.js'
import { tmpRoot } from '../support/tmp.js'

const CODES = Object.keys(OCI_ERRORS) as OciCode[]

describe('the OCI error table', () => {
  test('every code answers with its table status, whatever a caller passes', () => {
    for (const code of CODES) {
      // A status smuggled past the types (an object built elsewhere) is ignored too.
      const opts = { status: 299, message: 'm' } as unknown as { message: string }
      const err = new RegistryError(code, null, opts)
      expect(err.status, code).toBe(OCI_ERRORS[code].status)
      expect(new RegistryError(code).status, code).toBe(OCI_ERRORS[code].status)
      expect(JSON.parse(err.body()).errors[0].code).toBe(code)
    }
  })

  test('the table cannot be bent at run time', () => {
    expect(Object.isFrozen(OCI_ERRORS)).toBe(true)
    for (const code of CODES) expect(Object.isFrozen(OCI_ERRORS[code]), code).toBe(true)
    expect(() => {
      ;(OCI_ERRORS.NOT_FOUND as { status: number }).status = 400
    }).toThrow(TypeError)
    expect(new RegistryError('NOT_FOUND').status).toBe(404)
  })

  test('types: no status option, and a code fixes the status type', () => {
    // `npm run typecheck` fails if either line below stops being a type error.
    // @ts-expect-error RegistryError takes no status: the table decides it
    new RegistryError('UNSUPPORTED', null, { status: 404 })
    const err = new RegistryError('NOT_FOUND')
    // @ts-expect-error status is read-only
    err.status = 400
    expectTypeOf(new RegistryError('NOT_FOUND').status).toEqualTypeOf<404>()
    expectTypeOf(new RegistryError('HEADERS_TOO_LARGE').status).toEqualTypeOf<431>()
    expectTypeOf(new RegistryError('UNSUPPORTED').status).toEqualTypeOf<405>()
  })

  test('statuses clients relied on keep their own codes', () => {
    const expected: [OciCode, number][] = [
      ['NOT_FOUND', 404],
      ['REQUEST_INVALID', 400],
      ['REQUEST_TIMEOUT', 408],
      ['REQUEST_TOO_LARGE', 413],
      ['HEADERS_TOO_LARGE', 431],
      ['LOOP_DETECTED', 508],
      ['UNSUPPORTED', 405],
      ['UNAUTHORIZED', 401],
      ['DENIED', 403],
      ['MANIFEST_INVALID', 502],
    ]
    for (const [code, status] of expected) expect(OCI_ERRORS[code].status, code).toBe(status)
  })
})

describe('upstream content that is not what it claims', () => {
  test('INVALID is MANIFEST_INVALID (502) for a manifest and UNAVAILABLE (503) for a blob', () => {
    const detail = { expected: 'sha256:a', actual: 'sha256:b' }
    const invalid = new UpstreamError('INVALID', 'upstream sent bad bytes', { detail })
    const manifest = invalid.toRegistryError('MANIFEST_UNKNOWN')
    expect([manifest.code, manifest.status, manifest.detail]).toEqual(['MANIFEST_INVALID', 502, detail])
    expect(manifest.message).toBe('upstream sent bad bytes')
    const blob = invalid.toRegistryError('BLOB_UNKNOWN')
    expect([blob.code, blob.status]).toEqual(['UNAVAILABLE', 503])
    const tooBig = new UpstreamError('INVALID', 'manifest x is larger than 4 MiB').toRegistryError(
      'MANIFEST_UNKNOWN',
    )
    expect([tooBig.code, tooBig.detail]).toEqual(['MANIFEST_INVALID', 'manifest x is larger than 4 MiB'])
  })
})

describe('network errors', () => {
  const coded = (code: string) => Object.assign(new Error(`boom ${code}`), { code })

  test('one mapping: timeouts are TIMEOUT, other network codes NETWORK, disk errors are not network', () => {
    for (const code of [
      'UND_ERR_CONNECT_TIMEOUT',
      'UND_ERR_HEADERS_TIMEOUT',
      'UND_ERR_BODY_TIMEOUT',
      'ETIMEDOUT',
    ]) {
      expect(isNetworkError(coded(code)), code).toBe(true)
      expect(networkFailure(coded(code)).kind, code).toBe('TIMEOUT')
    }
    for (const code of [
      'ECONNRESET',
      'ECONNREFUSED',
      'EPIPE',
      'ENOTFOUND',
      'EAI_AGAIN',
      'UND_ERR_SOCKET',
      'ERR_TLS_CERT_ALTNAME_INVALID',
      'CERT_HAS_EXPIRED',
    ]) {
      expect(isNetworkError(coded(code)), code).toBe(true)
      expect(networkFailure(coded(code)).kind, code).toBe('NETWORK')
    }
    for (const code of ['ENOSPC', 'EIO', 'EROFS', 'ENOENT'])
      expect(isNetworkError(coded(code)), code).toBe(false)
    expect(isNetworkError(new Error('no code'))).toBe(false)
    const failure = networkFailure(coded('ECONNRESET'), 'upstream body')
    expect(failure.message).toBe('upstream body unreachable: ECONNRESET')
    expect(failure.code).toBe('UPSTREAM_NETWORK')
    const deadline = new UpstreamError('TIMEOUT', 'deadline')
    expect(networkFailure(deadline)).toBe(deadline)
  })

  test('a fill whose upstream body fails with a socket timeout fails as TIMEOUT, not as a disk error', async () => {
    const root = await tmpRoot('pullcache-errors')
    const blobs = new BlobStore(root)
    await blobs.open()
    const index = new IndexDb(join(root, 'index.db'))
    const digest = `sha256:${'c'.repeat(64)}`
    const fill = new Fill(digest, 'library/x', new Store(blobs, index))
    const body = new Readable({
      read() {
        this.push(Buffer.alloc(10))
        this.destroy(coded('ETIMEDOUT'))
      },
    })
    await fill.run({
      open: async () => ({ size: 100, body }),
      onCommit: () => {},
      onSettled: () => {},
    })
    expect(fill.state).toBe('failed')
    expect(fill.error).toBeInstanceOf(UpstreamError)
    expect((fill.error as UpstreamError).kind).toBe('TIMEOUT')
  })
})

describe('error classes', () => {
  // One instance of each error class in src/, by class name.
  const instances: Record<string, Error> = {
    RegistryError: new RegistryError('UNKNOWN'),
    UpstreamError: new UpstreamError('NETWORK', 'x'),
    PullError: new PullError('x'),
    InvalidReference: new InvalidReference('x', 'y'),
    InvalidPlatform: new InvalidPlatform('x', 'y'),
    SourceError: new SourceError('x'),
    HtpasswdError: new HtpasswdError('/p', ['x']),
    ConfigError: new ConfigError(['x']),
    CliExit: new CliExit(2, 'x'),
    ArchiveError: new ArchiveError('x'),
    StoreLocked: new StoreLocked('/root', '/root/lock'),
    BlobMismatch: new BlobMismatch(`sha256:${'a'.repeat(64)}`, `sha256:${'b'.repeat(64)}`, 1, 1),
    TlsError: new TlsError(['x']),
  }

  test('every error class in src has a stable string code', () => {
    for (const [name, err] of Object.entries(instances)) {
      const code = (err as { code?: unknown }).code
      expect(typeof code, name).toBe('string')
      expect(code, name).toMatch(/^[A-Z][A-Z0-9_]*$/)
      expect(err.name, name).toBe(name)
    }
    const fixed = Object.entries(instances)
      .filter(([name]) => name !== 'RegistryError' && name !== 'UpstreamError')
      .map(([, err]) => (err as { code?: unknown }).code)
    expect(new Set(fixed).size).toBe(fixed.length)
    expect(new CliExit(1, 'y').code).toBe((instances.CliExit as CliExit).code)
    expect(new CliExit(1, 'y').exitCode).toBe(1)
  })

  test('the list above names every exported error class in src', () => {
    const found: string[] = []
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name)
        if (entry.isDirectory()) walk(path)
        else if (entry.name.endsWith('.ts')) {
          for (const m of readFileSync(path, 'utf8').matchAll(
            /^export class (\w+)(?:<[^>]*>)? extends \w*Error\b/gm,
          )) {
            found.push(m[1]!)
          }
        }
      }
    }
    walk(join(import.meta.dirname, '../../src'))
    expect(found.sort()).toEqual(Object.keys(instances).sort())
  })
})
