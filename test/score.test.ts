/**
 * Scoring and perplexity against Hugging Face on the trained fixture (per-token log-probs within
 * 1e-4, the three perplexities within 1e-4 relative), top-N / greedy against the float64 log-softmax
 * of the tiny fixture's logits, the read-back bound, context handling and refusals.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { allClose, rejects } from './helpers.js';
import { decodeF32, fixturesDir, tinyReference } from './fixtures-util.js';
import { engine, tinyModel } from './model-util.js';
import type { Model } from '../src/engine/engine.js';
import { ContextOverflowError, InvalidOptionError, PromptError } from '../src/errors.js';
import { logprobs64 } from './reference/logprobs.js';

const dir = join(fixturesDir(), 'trained-gpt2-fortunes');
const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as {
  prompts: Array<{ ids: number[] }>;
  scoring: number[][];
  perplexity: {
    text_ids_b64: string;
    window: number;
    stride: number;
    ppl: number;
    ppl_no_overlap: number;
    ppl_token_mean: number;
  };
};
const textIds = Array.from(new Uint32Array(Buffer.from(ref.perplexity.text_ids_b64, 'base64').buffer.slice(0)));
let trainedP: Promise<Model> | undefined;
const trained = () => (trainedP ??= engine().then((e) => e.loadModel(dir)));

test('trained fixture: per-token log-probs of the 5 prompts within 1e-4 of transformers', async () => {
  const model = await trained();
  for (const [i, p] of ref.prompts.entries()) {
    const r = await model.score(p.ids);
    assert.is(r.tokens.length, p.ids.length - 1, `prompt ${i}: every token but the first is scored`);
    assert.equal(
      r.tokens.map((t) => t.id),
      p.ids.slice(1),
      `prompt ${i} ids`,
    );
    allClose(
      r.tokens.map((t) => t.logprob),
      ref.scoring[i]!,
      { atol: 1e-4 },
      `prompt ${i} log-probs`,
    );
  }
});

test('trained fixture: perplexity of 1,500 tokens (window 256, stride 128; and stride 256) within 1e-4 relative', async () => {
  const model = await trained();
  const { window, stride } = ref.perplexity;
  const r = await model.perplexity(textIds, { window, stride });
  assert.is(r.tokens, textIds.length - 1, 'each token 1..n-1 scored once');
  const rel = (a: number, b: number) => Math.abs(a - b) / b;
  assert.ok(rel(r.perplexityHf, ref.perplexity.ppl) < 1e-4, `HF ppl ${r.perplexityHf} vs ${ref.perplexity.ppl}`);
  assert.ok(
    rel(r.perplexity, ref.perplexity.ppl_token_mean) < 1e-4,
    `token-mean ppl ${r.perplexity} vs ${ref.perplexity.ppl_token_mean}`,
  );
  const n = await model.perplexity(textIds, { window, stride: window });
  assert.is(n.tokens, 1494, 'no overlap: the first token of each window is not scored');
  assert.ok(
    rel(n.perplexity, ref.perplexity.ppl_no_overlap) < 1e-4,
    `no-overlap ppl ${n.perplexity} vs ${ref.perplexity.ppl_no_overlap}`,
  );
});

test('a 1,000-token score reads back < 100 KB (8 bytes per token, 168 with top 20)', async () => {
  const model = await trained();
  const ids = textIds.slice(0, 1000);
  for (const [top, limit] of [
    [0, 100_000],
    [20, 200_000],
  ] as const) {
    const before = model.ctx.stats.bytesReadBack;
    const r = await model.score(ids, { window: 256, stride: 128, top });
    const bytes = model.ctx.stats.bytesReadBack - before;
    assert.is(bytes, r.readbackBytes, 'the call reads back exactly its result');
    assert.is(bytes, 999 * (2 + 2 * top) * 4);
    assert.ok(bytes < limit);
  }
});

test('tiny fixture: top-20 alternatives and greedy flags equal the float64 log-softmax of the HF logits', async () => {
  const model = await tinyModel();
  const p = tinyReference().prompts[0]!;
  const logits = decodeF32(p.all_logits_f32_b64!);
  const V = 50257;
  const T = p.ids.length;
  const ref64 = logprobs64(logits, T - 1, V, p.ids.slice(1), 20);
  const r = await model.score(p.ids, { top: 20 });
  for (let t = 0; t < T - 1; t++) {
    const g = r.tokens[t]!;
    const e = ref64[t]!;
    allClose([g.logprob], [e.logprob], { atol: 1e-3 }, `token ${t} log-prob`);
    assert.is(g.greedy, e.argmax === p.ids[t + 1], `token ${t} greedy flag`);
    assert.equal(
      g.top!.slice(0, 5).map((a) => a.id),
      e.top.slice(0, 5).map((a) => a.id),
      `token ${t} top-5 ids`,
    );
    allClose(
      g.top!.map((a) => a.logprob),
      e.top.map((a) => a.logprob),
      { atol: 1e-3 },
      `token ${t} top log-probs`,
    );
  }
});

test('a window longer than a chunk (cache carried across chunks), and windows whose first chunks score nothing', async () => {
  const model = await tinyModel();
  const ids = Array.from({ length: 320 }, (_, i) => (i * 7919 + 13) % 50257);
  const V = 50257;
  const T = 300;
  const logits = (await model.logits(ids.slice(0, T), { allPositions: true })).data;
  const ref64 = logprobs64(logits, T - 1, V, ids.slice(1, T), 0);
  const a = await model.score(ids.slice(0, T));
  allClose(
    a.tokens.map((t) => t.logprob),
    ref64.map((e) => e.logprob),
    { atol: 1e-4 },
    '300 tokens in chunks of 256 + 44',
  );
  const b = await model.score(ids, { window: T, stride: 10 });
  assert.equal(
    b.windows.map((w) => [w.start, w.end, w.scored]),
    [
      [0, 300, 299],
      [10, 310, 10],
      [20, 320, 10],
    ],
  );
  assert.equal(
    b.tokens.map((t) => t.position),
    Array.from({ length: 319 }, (_, i) => i + 1),
  );
  allClose(
    b.tokens.slice(0, 299).map((t) => t.logprob),
    a.tokens.map((t) => t.logprob),
    { atol: 1e-6 },
    'window 1',
  );
  const c = await model.score(ids.slice(10, 310));
  allClose(
    b.tokens.slice(299, 309).map((t) => t.logprob),
    c.tokens.slice(289).map((t) => t.logprob),
    { atol: 1e-5 },
    'window 2',
  );
});

test('context conditions the text and is not scored; text as a string', async () => {
  const model = await trained();
  const ids = ref.prompts[3]!.ids;
  const whole = await model.score(ids);
  const part = await model.score(ids.slice(10), { context: ids.slice(0, 10) });
  assert.is(part.tokens.length, ids.length - 10);
  allClose(
    part.tokens.map((t) => t.logprob),
    whole.tokens.slice(9).map((t) => t.logprob),
    { atol: 1e-5 },
    'tail',
  );
  const s = await model.score('The meaning of life is');
  assert.equal(
    s.tokens.map((t) => t.id),
    model.tokenizer.encode('The meaning of life is').slice(1),
  );
});

test('score refuses bad input by name before any GPU work', async () => {
  const model = await trained();
  await rejects(
    () => model.score([]),
    (e) => e instanceof PromptError && /text is empty/.test(e.message),
  );
  await rejects(
    () => model.score([5]),
    (e) => e instanceof PromptError && /nothing to predict/.test(e.message),
  );
  await rejects(
    () => model.score([1, 2], { top: 21 }),
    (e) => e instanceof InvalidOptionError && /top must be an integer in \[0, 20\], got 21/.test(e.message),
  );
  await rejects(
    () => model.score([1, 2], { topN: 3 } as never),
    (e) => e instanceof InvalidOptionError && /unknown score option "topN"/.test(e.message),
  );
  await rejects(
    () => model.score([1, 2], { window: 257 }),
    (e) => e instanceof InvalidOptionError && /window must be an integer in \[2, 256\]/.test(e.message),
  );
  await rejects(
    () => model.score(textIds.slice(0, 300)),
    (e) => e instanceof ContextOverflowError && /sliding windows/.test(e.message),
  );
  await rejects(
    () => model.score([1, 60000]),
    (e) => e instanceof PromptError && /ids must be integers in \[0, 50256\]/.test(e.message),
  );
});

test.run();
