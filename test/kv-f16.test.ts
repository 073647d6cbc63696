/**
 * f16 KV caches (kvDtype 'f16') end to end: the whole model under every device profile against the
 * float64 GPT-2 whose K/V are rounded to f16 (prompts of 70 tokens through each profile's prompt
 * attention, decode steps through its decode attention); cached generation equal to the uncached
 * recompute on the same storage, through context shifts; beam search (K/V reordered by kv_gather)
 * whose scores equal a plain re-scoring; perplexity on the trained fixture within 0.1% of the f32
 * cache's; the byte counts; bad values refused before any GPU work.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { allClose, compare, rejects } from './helpers.js';
import { forward64, loadTensors } from './reference/gpt2.js';
import { cfgOf, decodeLogits, engine, tinyModel } from './model-util.js';
import { fixturesDir, tinyReference } from './fixtures-util.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { roundF16 } from '../src/kernels/f16.js';
import { PROFILE_NAMES } from '../src/kernels/profile.js';
import { InvalidOptionError } from '../src/errors.js';
import type { Model } from '../src/engine/engine.js';

const MAIN = cfgOf({ n_embd: 64, n_head: 4, n_layer: 2, n_positions: 160, vocab_size: 257 });
const V = MAIN.vocab_size;

for (const name of PROFILE_NAMES) {
  test(`profile ${name}, f16 KV cache: 70-token prompt and decode steps match the float64 forward on f16-rounded K/V`, async () => {
    const e = await engine();
    let model: Model;
    try {
      model = await e.loadModel(randomCheckpoint(MAIN, 11), { kvDtype: 'f16', experimental: { profile: { name } } });
    } catch (err) {
      // a subgroup profile on a device without subgroups: refused by name (profiles.test.ts checks it)
      if (err instanceof InvalidOptionError && /subgroup/.test(err.message)) return;
      throw err;
    }
    try {
      const tensors = await loadTensors(randomCheckpoint(MAIN, 11));
      const ids = Array.from({ length: 70 }, (_, i) => (i * 53 + 11) % V);
      const got = (await model.logits(ids, { allPositions: true })).data;
      const want = forward64(tensors, MAIN, ids, { kvRound: roundF16 });
      const tol = { rel: 1e-5 };
      allClose(got, want, tol, '70 positions');
      // The f16 storage shows: the f32-K/V reference is further away than the tolerance.
      const f32 = compare(got, forward64(tensors, MAIN, ids), tol);
      assert.ok(!f32.ok, `the logits should differ from f32-cache ones by more than ${tol.rel}: ${f32.message}`);
      const prompt = ids.slice(0, 13);
      const fed = [9, 2, 6];
      const steps = await decodeLogits(model, prompt, fed);
      steps.forEach((g, i) => {
        const all = [...prompt, ...fed.slice(0, i + 1)];
        const w = forward64(tensors, MAIN, all, { kvRound: roundF16 }).subarray((all.length - 1) * V);
        allClose(g, w, tol, `decode step ${i}`);
      });
    } finally {
      model.destroy();
    }
  });
}

/** The tiny fixture with f16 caches by default (the model is shared: restore the default after). */
async function withF16<T>(fn: (m: Model) => Promise<T>): Promise<T> {
  const model = await tinyModel();
  model.kvDtype = 'f16';
  try {
    return await fn(model);
  } finally {
    model.kvDtype = 'f32';
  }
}

test('f16 KV cache: cached generation equals the uncached recompute: batched, one prompt copied to 3 rows, through context shifts', () =>
  withF16(async (model) => {
    const ref = tinyReference();
    const prompts = [ref.prompts[0]!.ids, ref.prompts[1]!.ids.slice(0, 3)];
    const opts = { temperature: 0.9, seed: 5, maxNewTokens: 24, stopAtEos: false };
    const a = await model.generateBatch(prompts, opts);
    const b = await model.generateBatch(prompts, { ...opts, useCache: false });
    assert.equal(
      a.sequences.map((s) => s.tokens),
      b.sequences.map((s) => s.tokens),
    );
    // one prompt for 3 sequences: prefilled once in a scratch cache, its f16 K/V copied to every row
    const n3 = { ...opts, numSequences: 3 };
    const a3 = await model.generate(prompts[0]!, n3);
    const b3 = await model.generate(prompts[0]!, { ...n3, useCache: false });
    assert.equal(
      a3.sequences.map((s) => s.tokens),
      b3.sequences.map((s) => s.tokens),
    );
    // capacity 32, keep 16: several shifts (re-encodes into the f16 cache)
    const s1 = await model.createSession({ capacity: 32, keep: 16 });
    const s2 = await model.createSession({ capacity: 32, keep: 16 });
    try {
      assert.equal([s1.cache.kvDtype, s2.cache.kvDtype], ['f16', 'f16']);
      const o = { temperature: 1, seed: 9, maxNewTokens: 80, stopAtEos: false };
      const c = await s1.generate(ref.prompts[0]!.ids, o);
      const u = await s2.generate(ref.prompts[0]!.ids, { ...o, useCache: false });
      assert.ok(c.stats.shifts >= 2, `shifts ${c.stats.shifts}`);
      assert.equal(c.sequences[0]!.tokens, u.sequences[0]!.tokens);
    } finally {
      s1.destroy();
      s2.destroy();
    }
  }));

test('f16 KV cache: beam search (K/V reordered by kv_gather) scores equal a re-scoring of each hypothesis', () =>
  withF16(async (model) => {
    const prompt = tinyReference().prompts[2]!.ids;
    const res = await model.beamSearch(prompt, { numBeams: 4, numReturnSequences: 4, maxNewTokens: 12 });
    for (const [j, h] of res.sequences.entries()) {
      const s = await model.score([...prompt, ...h.tokens]);
      const sum = s.tokens.slice(-h.tokens.length).reduce((x, t) => x + t.logprob, 0);
      assert.ok(Math.abs(h.logprob - sum) <= 1e-3, `beam ${j}: logprob ${h.logprob}, re-scored ${sum}`);
    }
  }));

test('f16 KV cache: trained fixture perplexity (window 256, stride 128) within 0.1% of the f32 cache', async () => {
  const dir = join(fixturesDir(), 'trained-gpt2-fortunes');
  const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as {
    perplexity: { text_ids_b64: string; window: number; stride: number };
  };
  const ids = Array.from(new Uint32Array(Buffer.from(ref.perplexity.text_ids_b64, 'base64').buffer.slice(0)));
  const { window, stride } = ref.perplexity;
  const model = await (await engine()).loadModel(dir);
  try {
    const p32 = await model.perplexity(ids, { window, stride });
    model.kvDtype = 'f16';
    const p16 = await model.perplexity(ids, { window, stride });
    const change = p16.perplexityHf / p32.perplexityHf - 1;
    assert.ok(Math.abs(change) < 1e-3, `f16 ${p16.perplexityHf} vs f32 ${p32.perplexityHf}: ${change}`);
    assert.ok(change !== 0, 'the f16 run used f16 storage (its perplexity differs at all)');
  } finally {
    model.destroy();
  }
});

test('f16 KV cache: half the bytes (cache.bytes, session.bytes, model.cacheBytes)', async () => {
  const model = await tinyModel();
  const c32 = await model.createCache({ rows: 3, capacity: 40 });
  const c16 = await model.createCache({ rows: 3, capacity: 40, kvDtype: 'f16' });
  const s16 = await model.createSession({ capacity: 40, kvDtype: 'f16' });
  try {
    const { n_layer, n_embd } = model.config;
    assert.is(c32.bytes, 2 * n_layer * 3 * 40 * n_embd * 4);
    assert.is(c16.bytes, c32.bytes / 2);
    assert.equal([c16.kvDtype, c32.kvDtype], ['f16', 'f32']);
    assert.is(model.cacheBytes(3, 40, 'f16'), c16.bytes);
    assert.is(model.cacheBytes(3, 40), c32.bytes, "the model's default: f32");
    assert.is(s16.bytes, c16.bytes / 3, 'a fresh session holds its cache alone');
  } finally {
    c32.destroy();
    c16.destroy();
    s16.destroy();
  }
});

test('kvDtype: bad values refused with the valid ones before any GPU work; f16 refused at a head size not a multiple of 8', async () => {
  const e = await engine();
  const model = await tinyModel();
  const before = model.ctx.liveBuffers.count;
  const bad = (x: Error) =>
    x instanceof InvalidOptionError && /kvDtype must be one of 'f32', 'f16', got "bf16"/.test(x.message);
  // @ts-expect-error: a value outside KvDtype
  await rejects(() => model.createCache({ kvDtype: 'bf16' }), bad, 'createCache');
  // @ts-expect-error: the same
  await rejects(() => model.createSession({ kvDtype: 'bf16' }), bad, 'createSession');
  // @ts-expect-error: the same
  await rejects(() => model.createSessionGroup(2, { kvDtype: 'bf16' }), bad, 'createSessionGroup');
  // @ts-expect-error: the same
  await rejects(() => e.loadModel('random:gpt2', { kvDtype: 'bf16' }), bad, 'loadModel');
  assert.is(model.ctx.liveBuffers.count, before, 'nothing was allocated');
  const odd = randomCheckpoint(cfgOf({ n_embd: 48, n_head: 4 }), 1); // head size 12
  await rejects(
    () => e.loadModel(odd, { kvDtype: 'f16' }),
    (x) => x instanceof InvalidOptionError && /multiple of 8.*is 12/.test(x.message),
  );
  assert.is(model.ctx.liveBuffers.count, before, 'nothing was uploaded');
});

test.run();
