/**
 * Prompts of the wrong type (issue 28, item 15): generate(null) gave a raw TypeError and
 * generate(42) said "prompt is empty". Every entry point names what it got and what it accepts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { PromptError } from '../src/errors.js';
import { tinyModel } from './model-util.js';

/** fn rejects (or throws) a PromptError matching `pattern`. */
async function promptError(fn: () => unknown, pattern: RegExp): Promise<void> {
  try {
    await fn();
  } catch (e) {
    assert.instance(e, PromptError, `${(e as Error).name}: ${(e as Error).message}`);
    assert.match((e as Error).message, pattern);
    return;
  }
  assert.unreachable(`expected a PromptError matching ${pattern}`);
}

const ACCEPTS = 'must be a string or an array of token ids \\(numbers in \\[0, \\d+\\]\\)';

test('item 15: a prompt that is not a string or an id array is a PromptError naming what was given', async () => {
  const model = await tinyModel();
  const base = model.ctx.liveBuffers;
  const bad = (p: unknown) => p as string; // the wrong types a JavaScript caller can pass
  const cases: Array<[unknown, string]> = [
    [null, 'null'],
    [undefined, 'undefined'],
    [42, 'a number \\(42\\)'],
    [true, 'a boolean \\(true\\)'],
    [{ length: 2 }, 'an object'],
  ];
  for (const [p, got] of cases) {
    const re = new RegExp(`^prompt ${ACCEPTS}, got ${got}`);
    await promptError(() => model.generate(bad(p), { maxNewTokens: 1 }), re);
    await promptError(() => model.beamSearch(bad(p), { numBeams: 2, maxNewTokens: 1 }), re);
  }
  await promptError(
    async () => {
      for await (const t of model.stream(bad(null), { maxNewTokens: 1 })) void t;
    },
    new RegExp(`^prompt ${ACCEPTS}, got null`),
  );
  assert.equal(model.ctx.liveBuffers, base, 'nothing allocated for a refused prompt');
  await promptError(
    () => model.generateBatch(['a', bad(7)], { maxNewTokens: 1 }),
    new RegExp(`^prompt 1 ${ACCEPTS}, got a number \\(7\\)`),
  );
  const session = await model.createSession({ capacity: 8 });
  await promptError(() => session.generate(bad(null), { maxNewTokens: 1 }), new RegExp(`got null`));
  session.destroy();
  const group = await model.createSessionGroup(2, { capacity: 8 });
  await promptError(() => group.sessions[0]!.generate(bad(42), { maxNewTokens: 1 }), /got a number \(42\)/);
  group.destroy();
  // Typed arrays of ids still work.
  const r = await model.generate(bad(Uint32Array.of(1, 2)), { maxNewTokens: 1, temperature: 0 });
  assert.is(r.sequences[0]!.tokens.length, 1);
});

test("tokenizer.decode: ids outside the vocabulary or not integers are a PromptError naming the position (not the BPE library's plain Error)", async () => {
  const { tokenizer } = await tinyModel();
  const ids = (x: unknown) => x as number[];
  for (const [given, re] of [
    [[1, 99999999], /^decode: token 1 is 99999999; ids are integers in \[0, 50256\]$/],
    [[-5], /^decode: token 0 is -5;/],
    [[1.5], /^decode: token 0 is 1\.5;/],
    [[50257], /^decode: token 0 is 50257;/],
    [null, /^decode takes an array of token ids, got null$/],
  ] as const)
    await promptError(() => tokenizer.decode(ids(given)), re);
  assert.is(tokenizer.decode([15496, 11, 50256]), 'Hello,<|endoftext|>');
  assert.is(tokenizer.decode(ids(Uint32Array.of(15496))), 'Hello');
});

test.run();
