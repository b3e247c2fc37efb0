// Certificates made for a test by the real `openssl` CLI, as an operator would make them: a CA,
// server certificates it signs for 127.0.0.1, ::1 and localhost, client certificates with a CN. Each
// set lives in a temp dir removed after the test file (tmp.ts).

import { execFile } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { tmpRoot } from './tmp.js'

const run = promisify(execFile)

export interface TestCa {
  dir: string
  /** The CA certificate (PEM file). */
  cert: string
  key: string
  /** A server certificate (leaf then this CA, as a chain file) and its key, for 127.0.0.1. */
  server(name: string): Promise<{ cert: string; key: string }>
  /** A client certificate whose subject CN is `cn`, and its key. */
  client(cn: string): Promise<{ cert: string; key: string }>
}

/** EC P-256 keys: made in milliseconds, unlike RSA. */
const KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

export async function makeTestCa(label = 'test CA'): Promise<TestCa> {
  const dir = await tmpRoot('pullcache-certs')
  const cert = join(dir, 'ca.crt')
  const key = join(dir, 'ca.key')
  await run('openssl', [
    'req',
    '-x509',
    ...KEY,
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '2',
    '-subj',
    `/CN=pullcache ${label}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ])
  let serial = 0
  const issue = async (name: string, subject: string, extensions: string) => {
    const leafKey = join(dir, `${name}.key`)
    const csr = join(dir, `${name}.csr`)
    const leaf = join(dir, `${name}.leaf.crt`)
    const ext = join(dir, `${name}.ext`)
    await run('openssl', ['req', '-new', ...KEY, '-keyout', leafKey, '-out', csr, '-subj', subject])
    await writeFile(ext, extensions)
    await run('openssl', [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      cert,
      '-CAkey',
      key,
      '-set_serial',
      String(Date.now() * 100 + serial++),
      '-days',
      '2',
      '-extfile',
      ext,
      '-out',
      leaf,
    ])
    return { leaf, key: leafKey }
  }
  return {
    dir,
    cert,
    key,
    async server(name) {
      const { leaf, key: leafKey } = await issue(
        name,
        `/CN=${name}`,
        'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n',
      )
      // The file an operator installs: the leaf, then the chain up to (here: including) the CA.
      const chain = join(dir, `${name}.crt`)
      await writeFile(chain, Buffer.concat([await readFile(leaf), await readFile(cert)]))
      return { cert: chain, key: leafKey }
    },
    async client(cn) {
      const { leaf, key: leafKey } = await issue(
        `client-${cn}`,
        `/CN=${cn}`,
        'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n',
      )
      return { cert: leaf, key: leafKey }
    },
  }
}
