// Lint exists for one class of defect: a promise nobody awaits. A rejection
// that nobody handles ends the process (ERR_UNHANDLED_REJECTION), so in the
// service's own code (src/, workers/) every promise is awaited, returned,
// given a rejection handler, or `void`ed with a comment saying why that is safe.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    files: ['src/**/*.ts', 'workers/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-floating-promises': ['error', { ignoreVoid: true, ignoreIIFE: false }],
      '@typescript-eslint/no-misused-promises': 'error',
    },
  },
);
