import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // End-to-end suites start real registries and daemons; give them room, but keep every
    // test bounded so a hang fails instead of stalling CI.
    testTimeout: 120_000,
    hookTimeout: 180_000,
    // Two cores: run files one at a time so timing-sensitive pulls do not starve each other.
    fileParallelism: false,
    // A private TMPDIR per run that must be empty at the end, and per-file removal of tmpRoot() dirs.
    globalSetup: ['test/support/tmpdir-check.ts'],
    setupFiles: ['test/support/tmp-cleanup.ts'],
    reporters: ['default', ['json', { outputFile: 'test-results/vitest.json' }]],
  },
})
