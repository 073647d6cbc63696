/** The README's Node quickstart runs as written (through the package's own name). */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, tinyDir } from './fixtures-util.js';
import { createEngine } from '../src/node.js';

test('examples/node/quickstart.mjs generates 20 tokens from the tiny fixture', () => {
  const r = spawnSync(
    process.execPath,
    [join(REPO_ROOT, 'examples', 'node', 'quickstart.mjs'), tinyDir(), 'Hello world'],
    { encoding: 'utf8', timeout: 120_000, cwd: REPO_ROOT },
  );
  assert.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.is(j.tokens.length, 20);
  assert.is(j.seed, 1);
  assert.type(j.text, 'string');
});

test('bench/chat-load.mjs: a closed-loop chat load on separate sessions and on one group, JSON with every figure; bad flags refused', () => {
  const r = spawnSync(
    process.execPath,
    [join(REPO_ROOT, 'bench', 'chat-load.mjs'), '--model', tinyDir(), '--users', '3', '--turns', '2', '--json'],
    { encoding: 'utf8', timeout: 120_000, cwd: REPO_ROOT },
  );
  assert.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal([j.users, j.turns, j.dtype], [3, 2, 'f32']);
  // Replies of 6 + (7u + 5t) mod 15 new tokens, none cut short (no EOS stop).
  let want = 0;
  for (let u = 0; u < 3; u++) for (let t = 0; t < 2; t++) want += 6 + ((u * 7 + t * 5) % 15);
  for (const x of [j.separate, j.group]) {
    assert.is(x.tokens, want);
    assert.ok(
      x.ms > 0 && Math.abs(x.tokens_per_s - (1000 * x.tokens) / x.ms) < 1e-9 * x.tokens_per_s,
      JSON.stringify(x),
    );
  }
  assert.is(j.separate.turns_sharing_steps, 0);
  assert.ok(j.group.turns_sharing_steps >= 3, 'the first turns merged, later ones joined or merged');
  assert.ok(
    j.group.submits < j.separate.submits,
    `${j.group.submits} submits in a group, ${j.separate.submits} separate`,
  );
  for (const [args, msg] of [
    [['--users', '0'], /--users must be an integer in \[1, 256\], got 0/],
    [['--bogus'], /unknown flag --bogus; usage/],
    [['--model'], /--model needs a value/],
  ] as const) {
    const bad = spawnSync(process.execPath, [join(REPO_ROOT, 'bench', 'chat-load.mjs'), ...args], {
      encoding: 'utf8',
      timeout: 60_000,
      cwd: REPO_ROOT,
    });
    assert.is(bad.status, 2);
    assert.match(bad.stderr, msg);
  }
});

test('examples/node/chat-server.mjs answers each round of 3 users in one merged run, each reply as alone', async () => {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, 'examples', 'node', 'chat-server.mjs'), tinyDir(), '3'], {
    encoding: 'utf8',
    timeout: 120_000,
    cwd: REPO_ROOT,
  });
  assert.is(r.status, 0, r.stderr);
  const rounds = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.is(rounds.length, 2);
  for (const round of rounds) {
    assert.equal(round.batch_rows, [3, 3, 3]);
    for (const reply of round.replies) assert.is(reply.tokens.length, 12);
  }
  // Each reply is what that user's conversation gets alone: replay user 1 on a session of its own.
  const engine = await createEngine();
  try {
    const model = await engine.loadModel(tinyDir());
    const s = await model.createSession({ capacity: 256 });
    for (const [i, msg] of [`User 1 says hello.`, ` User 1 asks what happens next.`].entries()) {
      const alone = await s.generate(msg, { maxNewTokens: 12, temperature: 0.8, topK: 40, seed: 100 * i + 1 });
      assert.equal(alone.sequences[0]!.tokens, rounds[i].replies[1].tokens, `round ${i}`);
    }
    assert.is(rounds[1].context_tokens[1], s.tokens.length);
  } finally {
    engine.destroy();
  }
});

test.run();
