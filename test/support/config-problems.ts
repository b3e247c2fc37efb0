// What a configuration that does not load says is wrong: the problems of the ConfigError `fn`
// throws. A config that loads fails the test (the problems were expected).

import { ConfigError } from '../../src/config.js'

export function problems(fn: () => unknown): string[] {
  try {
    fn()
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  throw new Error('expected a ConfigError')
}
