import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Each file's data directories go after it; the run fails if anything is left in its temp dir.
    setupFiles: ['test/support/cleanup.ts'],
    globalSetup: ['test/support/tempDir.ts', 'test/support/globalSetup.ts'],
    // Every test file starts real servers with real worker threads; two cores
    // cannot run many of them at once without timing out the slow ones.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
