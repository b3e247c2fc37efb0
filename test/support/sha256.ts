// The digest every test compares bodies against: "sha256:" and the hex of the bytes' hash.

import { createHash } from 'node:crypto'

export function sha256(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}
