/**
 * A merged session-group turn cancelled by its own AbortSignal: it ends alone (AbortError with
 * the tokens it got so far), its row is free at once for a joiner, the other turns of the run get
 * exactly what they get alone, and nothing stays allocated. Also: turns cancelled before they
 * start or while queued, and a group session's stream left early beside a merged turn.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { rejectsWith, tinyReference } from './fixtures-util.js';
import { tinyModel } from './model-util.js';
import { AbortError } from '../src/errors.js';
import type { GenerateOptions } from '../src/engine/generate.js';

const ref = tinyReference();
const ids = (i: number, n: number): number[] => ref.prompts[i]!.ids.slice(0, n);
const sampled = (seed: number, maxNewTokens: number, pipelineDepth: number): GenerateOptions => ({
  temperature: 0.9,
  topK: 25,
  freqPenalty: 2,
  seed,
  maxNewTokens,
  stopAtEos: false,
  pipelineDepth,
});

for (const depth of [1, 3])
  test(`one of 3 merged turns aborted mid-way: AbortError with its tokens so far, its row reused by a joiner, the others as alone (pipelineDepth ${depth})`, async () => {
    const model = await tinyModel();
    const base = model.ctx.liveBuffers;
    const group = await model.createSessionGroup(3, { capacity: 96 });
    const alone = await model.createSession({ capacity: 96 });
    const opts = (seed: number, n: number) => sampled(seed, n, depth);
    try {
      const ac = new AbortController();
      let done0 = false;
      const t0 = group.sessions[0]!.generate(ids(0, 3), {
        ...opts(1, 30),
        // Turn 1 is cancelled while turn 0 is at its 5th token (turn 1 has 4 by then).
        onToken: (ev) => {
          if (ev.index === 4) ac.abort();
        },
      });
      const t1 = group.sessions[1]!.generate(ids(1, 4), { ...opts(2, 40), signal: ac.signal });
      const t2 = group.sessions[2]!.generate(ids(2, 2), opts(3, 12));
      void t0.then(() => (done0 = true));
      const err = (await rejectsWith(t1, AbortError, /aborted after 4 tokens/)) as AbortError;
      // At once: turn 0 still runs, and turn 1's row is free for the session's next turn, which
      // joins the run in its slot.
      assert.not.ok(done0, 'turn 1 rejected while the run goes on');
      group.sessions[1]!.reset(); // throws CacheMisuseError while its row is busy
      const joiner = group.sessions[1]!.generate(ids(3, 5), opts(4, 6));
      const [r0, r2, rj] = await Promise.all([t0, t2, joiner]);
      await group.idle();
      assert.equal(
        [r0, r2, rj].map((r) => r.stats.batchRows),
        [3, 3, 3],
        'merged; the joiner took the aborted slot',
      );
      const solo = async (prompt: number[], o: GenerateOptions) => {
        alone.reset();
        return (await alone.generate(prompt, o)).sequences[0]!;
      };
      const w1 = await solo(ids(1, 4), opts(2, 40));
      assert.equal(err.tokens, w1.tokens.slice(0, 4), 'the aborted turn: its first 4 tokens');
      assert.is(err.text, model.tokenizer.decode(err.tokens));
      assert.equal(err.sequences, [{ tokens: err.tokens, text: err.text }]);
      assert.equal(r0.sequences[0], await solo(ids(0, 3), opts(1, 30)), 'turn 0');
      assert.equal(r2.sequences[0], await solo(ids(2, 2), opts(3, 12)), 'turn 2');
      assert.equal(rj.sequences[0], await solo(ids(3, 5), opts(4, 6)), 'the joiner');
      assert.ok(!group.cache.busy);
    } finally {
      await group.idle();
      group.destroy();
      alone.destroy();
    }
    assert.equal(model.ctx.liveBuffers, base, 'GPU buffers back to the baseline');
  });

test('a turn cancelled before it starts, or while queued to merge, rejects at once; the others merge without it', async () => {
  const model = await tinyModel();
  const base = model.ctx.liveBuffers;
  const group = await model.createSessionGroup(3, { capacity: 64 });
  try {
    const gone = new AbortController();
    gone.abort();
    await rejectsWith(
      group.sessions[0]!.generate([5, 6], { ...sampled(1, 5, 1), signal: gone.signal }),
      AbortError,
      /before it started/,
    );
    const ac = new AbortController();
    const p = [
      group.sessions[0]!.generate([5, 6], sampled(1, 5, 1)),
      group.sessions[1]!.generate([7], { ...sampled(2, 5, 1), signal: ac.signal }),
      group.sessions[2]!.generate([8, 9], sampled(3, 5, 1)),
    ];
    ac.abort(); // the same tick: the turn is still queued
    const err = (await rejectsWith(p[1]!, AbortError, /aborted after 0 tokens/)) as AbortError;
    assert.equal(err.tokens, []);
    const [a, , c] = await Promise.all([p[0], p[1]!.catch(() => undefined), p[2]]);
    assert.equal([a!.stats.batchRows, c!.stats.batchRows], [2, 2]);
    assert.equal(group.sessions[1]!.tokens, [], 'nothing reached its row');
  } finally {
    await group.idle();
    group.destroy();
  }
  assert.equal(model.ctx.liveBuffers, base);
});

test("a group session's stream merges with another turn; leaving its loop early ends it alone", async () => {
  const model = await tinyModel();
  const group = await model.createSessionGroup(2, { capacity: 64 });
  const alone = await model.createSession({ capacity: 64 });
  try {
    const stream = group.sessions[0]!.stream(ids(0, 4), sampled(1, 40, 1));
    const other = group.sessions[1]!.generate(ids(1, 3), sampled(2, 20, 1));
    const got: number[] = [];
    for await (const ev of stream) {
      got.push(ev.token);
      if (got.length === 3) break;
    }
    const err = (await rejectsWith(stream.result, AbortError, /aborted/)) as AbortError;
    assert.equal(err.tokens, got);
    const r = await other;
    assert.is(r.stats.batchRows, 2, 'the stream shared its steps');
    const want = await alone.generate(ids(1, 3), sampled(2, 20, 1));
    assert.equal(r.sequences[0], want.sequences[0]);
  } finally {
    await group.idle();
    group.destroy();
    alone.destroy();
  }
});

test.run();
