/**
 * Runs in every test file (vitest setupFiles): its data directories go after
 * its last test, also those of a test that failed before its own cleanup.
 * This afterAll was registered first, so it runs after the file's own.
 */
import { afterAll } from 'vitest';
import { removeDataDirs } from './server.ts';

afterAll(() => removeDataDirs());
