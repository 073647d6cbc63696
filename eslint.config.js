// Lint rules: typescript-eslint's recommended set over the sources, tests, bench and scripts, and
// size limits over the sources.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'src/shaders.gen.ts', 'test/shaders.gen.ts', 'weights/', '.gpu/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    // Size limits for the sources: a function that needs more than 120 lines, or a module more than
    // 600, is split (one job per function, one family per module).
    files: ['src/**/*.ts'],
    rules: {
      'max-lines-per-function': ['error', { max: 120, skipBlankLines: true, skipComments: true }],
      'max-lines': ['error', { max: 600, skipBlankLines: true, skipComments: true }],
    },
  },
  {
    languageOptions: { globals: { ...globals.node, ...globals.browser } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // Sources stay readable in pieces: no function over 120 lines, no file over 600 (code lines).
    files: ['src/**/*.ts'],
    rules: {
      'max-lines-per-function': ['error', { max: 120, skipBlankLines: true, skipComments: true }],
      'max-lines': ['error', { max: 600, skipBlankLines: true, skipComments: true }],
    },
  },
);
