/**
 * Faults and long runs: device loss mid-generation, a cache too big for the adapter, a soak loop
 * of caches created and destroyed while generating (GPU buffers return to the baseline), and a
 * model that stays usable after bad input.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { rejects } from './helpers.js';
import { tinyCheckpoint, tinyReference } from './fixtures-util.js';
import { tinyModel } from './model-util.js';
import { createEngine } from '../src/node.js';
import { DeviceLostError, InvalidOptionError, OutOfMemoryError, PromptError } from '../src/errors.js';

const ref = tinyReference();
const SOAK_ROUNDS = Number(process.env.GPT2_SOAK_ROUNDS ?? 20);

test('device lost mid-generation: the call rejects with DeviceLostError; a new engine works', async () => {
  const engine = await createEngine();
  const model = await engine.loadModel(await tinyCheckpoint());
  let n = 0;
  await rejects(
    () =>
      model.generate(ref.prompts[0]!.ids, {
        maxNewTokens: 400,
        stopAtEos: false,
        seed: 1,
        onToken: () => {
          if (++n === 5) model.ctx.device.destroy();
        },
      }),
    (e) => e instanceof DeviceLostError && /lost/.test(e.message),
  );
  assert.ok(n < 400);
  await rejects(
    () => model.generate([1], { maxNewTokens: 1 }),
    (e) => e instanceof DeviceLostError,
  );
  const engine2 = await createEngine();
  const model2 = await engine2.loadModel(await tinyCheckpoint());
  const r = await model2.generate(ref.prompts[0]!.ids, { temperature: 0, maxNewTokens: 4, stopAtEos: false });
  assert.equal(
    r.sequences[0]!.tokens,
    ref.prompts[0]!.greedy48.slice(ref.prompts[0]!.ids.length, ref.prompts[0]!.ids.length + 4),
  );
  engine2.destroy();
});

test('a cache too big for the adapter: OutOfMemoryError with numbers; other caches keep working', async () => {
  const model = await tinyModel();
  const s = await model.createSession();
  const before = model.ctx.liveBuffers;
  await rejects(
    () => model.createCache({ rows: 4096, capacity: 1024 }),
    (e) =>
      e instanceof OutOfMemoryError && /maxStorageBufferBindingSize/.test(e.message) && /4096 rows/.test(e.message),
  );
  assert.equal(model.ctx.liveBuffers, before, 'nothing leaked');
  const r = await s.generate(ref.prompts[0]!.ids, { temperature: 0, maxNewTokens: 3, stopAtEos: false });
  assert.is(r.sequences[0]!.tokens.length, 3);
  s.destroy();
});

test(`soak: ${SOAK_ROUNDS} caches created and destroyed while generating; GPU buffers return to the baseline`, async () => {
  const model = await tinyModel();
  await model.generate([1, 2], { maxNewTokens: 2, seed: 0 }); // warm pipelines
  const base = model.ctx.liveBuffers;
  const long = model.createSession({ capacity: 64, keep: 32 });
  const session = await long;
  const background = session.generate(ref.prompts[1]!.ids, {
    seed: 5,
    maxNewTokens: 40 * SOAK_ROUNDS,
    stopAtEos: false,
  });
  for (let i = 0; i < SOAK_ROUNDS; i++) {
    const c = await model.createSession({ capacity: 32 + i, rows: 1 + (i % 3) });
    await c.generate([1 + i, 2, 3], { seed: i, maxNewTokens: 5, stopAtEos: false });
    c.destroy();
  }
  const bg = await background;
  assert.ok(bg.stats.shifts > 0, 'the background generation shifted its window');
  session.destroy();
  assert.equal(model.ctx.liveBuffers, base);
});

test('bad input leaves the model usable and leaks nothing', async () => {
  const model = await tinyModel();
  const base = model.ctx.liveBuffers;
  await rejects(
    () => model.generate([], { maxNewTokens: 2 }),
    (e) => e instanceof PromptError,
  );
  await rejects(
    () => model.generate([99999]),
    (e) => e instanceof PromptError && /99999/.test(e.message),
  );
  await rejects(
    () => model.generate('x\uD800y'),
    (e) => e instanceof PromptError && /surrogate/.test(e.message),
  );
  await rejects(
    () => model.generate([1], { temperature: -0.5 }),
    (e) => e instanceof InvalidOptionError && /temperature/.test(e.message),
  );
  await rejects(
    () => model.generate([1], { bogus: 1 } as never),
    (e) => e instanceof InvalidOptionError && /bogus/.test(e.message),
  );
  assert.equal(model.ctx.liveBuffers, base);
  const r = await model.generate(ref.prompts[0]!.ids, { temperature: 0, maxNewTokens: 2, stopAtEos: false });
  assert.is(r.sequences[0]!.tokens.length, 2);
});

test.run();
