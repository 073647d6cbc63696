/** The README's Node quickstart runs as written (through the package's own name). */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, tinyDir } from './fixtures-util.js';

test('examples/node/quickstart.mjs generates 20 tokens from the tiny fixture', () => {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, 'examples', 'node', 'quickstart.mjs'), tinyDir(), 'Hello world'], { encoding: 'utf8', timeout: 120_000, cwd: REPO_ROOT });
  assert.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.is(j.tokens.length, 20);
  assert.is(j.seed, 1);
  assert.type(j.text, 'string');
});

test.run();
