// TLS on the listener: the PEM files the config names (tls.cert, tls.key, tls.client_ca), read and
// checked as one set, and the options the HTTPS server and its secure context are made from.
//
//   tls.cert       the server certificate, then its chain (intermediates), as PEM
//   tls.key        the private key of the first certificate in tls.cert (not encrypted)
//   tls.client_ca  CA certificates a client certificate must chain to (mTLS); null: none asked
//
// The files are read at load (config.ts, so a broken set stops the start with the config's exit
// code and `config check` reports it) and again by the server at start and on every SIGHUP: a
// renewed certificate under the same path is picked up without a restart. A set that does not
// check out is refused as a whole; the key's bytes are never put in a message.

import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createSecureContext, type SecureContextOptions, type TlsOptions } from 'node:tls'

/** When a client certificate is asked for: never, when the client has one, or on every handshake. */
export type ClientAuth = 'none' | 'optional' | 'require'

/** The tls section of the config, as TLS reads it. */
export interface TlsSettings {
  cert: string | null
  key: string | null
  client_ca: string | null
  client_auth: ClientAuth
}

/** The files' contents, checked: a key that matches the certificate, CAs that parse. */
export interface TlsMaterial {
  cert: Buffer
  key: Buffer
  ca: Buffer | undefined
  /** The server certificate's subject and expiry, for the log. */
  subject: string
  validTo: string
}

export class TlsError extends Error {
  readonly code = 'TLS_INVALID'
  readonly problems: string[]
  constructor(problems: string[]) {
    super(problems.join('; '))
    this.name = 'TlsError'
    this.problems = problems
  }
}

/** Whether the listener speaks TLS. */
export function tlsEnabled(tls: TlsSettings): boolean {
  return tls.cert !== null
}

/**
 * What is wrong with the tls settings and the files they name, each with its key; empty when
 * TLS is off or everything checks out.
 */
export function tlsProblems(tls: TlsSettings): string[] {
  try {
    readTlsMaterial(tls)
    return []
  } catch (err) {
    if (err instanceof TlsError) return err.problems
    throw err
  }
}

/** Reads and checks the files; throws TlsError with every problem found. TLS must be on. */
export function readTlsMaterial(tls: TlsSettings): TlsMaterial {
  const problems: string[] = []
  if ((tls.cert === null) !== (tls.key === null)) {
    problems.push(
      tls.cert === null
        ? 'tls.cert: tls.key is set but no certificate'
        : 'tls.key: tls.cert is set but no key',
    )
  }
  if (tls.cert === null && tls.client_ca !== null) {
    problems.push('tls.client_ca: client certificates need TLS on the listener (tls.cert and tls.key)')
  }
  if (tls.client_auth !== 'none' && tls.client_ca === null) {
    problems.push(
      `tls.client_auth: "${tls.client_auth}" needs tls.client_ca, the CA client certificates are checked against`,
    )
  }
  if (problems.length > 0 || tls.cert === null || tls.key === null) throw new TlsError(problems)

  const cert = readPem('tls.cert', tls.cert, problems)
  const key = readPem('tls.key', tls.key, problems)
  const ca = tls.client_ca === null ? undefined : readPem('tls.client_ca', tls.client_ca, problems)
  let leaf: X509Certificate | undefined
  let privateKey: KeyObject | undefined
  if (cert !== undefined) {
    try {
      // The first certificate of the file is the server's; the rest is its chain.
      leaf = new X509Certificate(cert)
    } catch {
      problems.push(`tls.cert: ${tls.cert} holds no PEM certificate`)
    }
  }
  if (key !== undefined) {
    try {
      privateKey = createPrivateKey(key)
    } catch (err) {
      // The message of an encrypted key asks for a passphrase; no other part of the key is shown.
      const why = /passphrase/i.test((err as Error).message)
        ? ' (it is encrypted; pullcache needs it unencrypted)'
        : ''
      problems.push(`tls.key: ${tls.key} holds no usable PEM private key${why}`)
    }
  }
  if (leaf !== undefined && privateKey !== undefined && !leaf.checkPrivateKey(privateKey)) {
    problems.push(`tls.key: ${tls.key} is not the key of the certificate in ${tls.cert}`)
  }
  if (ca !== undefined) {
    try {
      new X509Certificate(ca)
    } catch {
      problems.push(`tls.client_ca: ${tls.client_ca} holds no PEM certificate`)
    }
  }
  if (problems.length === 0 && cert !== undefined && key !== undefined) {
    // What OpenSSL itself makes of the set: a chain it refuses is refused here, not at a handshake.
    try {
      createSecureContext(contextOptions({ cert, key, ca, subject: '', validTo: '' }))
    } catch (err) {
      problems.push(`tls.cert: ${tls.cert} with ${tls.key} is refused: ${(err as Error).message}`)
    }
  }
  if (problems.length > 0 || cert === undefined || key === undefined || leaf === undefined) {
    throw new TlsError(problems)
  }
  return { cert, key, ca, subject: leaf.subject.replace(/\n/g, ', '), validTo: leaf.validTo }
}

function readPem(name: string, path: string, problems: string[]): Buffer | undefined {
  try {
    return readFileSync(path)
  } catch (err) {
    problems.push(`${name}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`)
    return undefined
  }
}

/** The secure context's options: what server.setSecureContext() swaps on a reload. */
export function contextOptions(material: TlsMaterial): SecureContextOptions {
  return {
    cert: material.cert,
    key: material.key,
    ...(material.ca === undefined ? {} : { ca: material.ca }),
    minVersion: 'TLSv1.2',
  }
}

/** The HTTPS server's TLS options. Whether a client certificate is asked for is set at start. */
export function serverTlsOptions(tls: TlsSettings, material: TlsMaterial): TlsOptions {
  return {
    ...contextOptions(material),
    // pullcache speaks HTTP/1.1; a client that offers h2 first is told so in the handshake.
    ALPNProtocols: ['http/1.1'],
    requestCert: tls.client_auth !== 'none',
    // 'optional': a client without a certificate, or with one the CA did not sign, is let in
    // and is anonymous (or signs in with a password); 'require' ends its handshake.
    rejectUnauthorized: tls.client_auth === 'require',
  }
}

/** Whether two reads of the files differ (compared in memory, never printed). */
export function sameMaterial(a: TlsMaterial, b: TlsMaterial): boolean {
  const same = (x: Buffer | undefined, y: Buffer | undefined) =>
    x === undefined || y === undefined ? x === y : x.equals(y)
  return same(a.cert, b.cert) && same(a.key, b.key) && same(a.ca, b.ca)
}
