// Vitest setup file: after each test file, remove the temp dirs its tests made with tmpRoot().

import { afterAll } from 'vitest'
import { removeTmpRoots } from './tmp.js'

afterAll(async () => {
  await removeTmpRoots()
})
