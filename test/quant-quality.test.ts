/**
 * What quantized weights cost in quality, on the trained fixture (trained-gpt2-fortunes: a really
 * trained GPT-2, vocabulary 50257), against transformers' float32 references: the last-position
 * logits of its 5 prompts (worst and mean |logit - HF|), greedy 48 (tokens until the first
 * difference, per prompt) and the perplexity of its 1,500-token text (window 256, stride 128).
 * Bounds that must hold: q8 perplexity within +0.5% of f32's and greedy 48 identical on at least 3
 * of the 5 prompts; q4 perplexity within +3% of f32's. The f32 model itself must match HF (its
 * perplexity within 1e-4), so that the comparison is against the right baseline.
 * With QUANT_QUALITY_JSON=<file> the figures are also written there (BENCHMARKS.md's table).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { decodeF32, fixturesDir } from './fixtures-util.js';
import { engine } from './model-util.js';
import type { WeightDType } from '../src/engine/weights.js';

const dir = join(fixturesDir(), 'trained-gpt2-fortunes');
const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as {
  prompts: Array<{ ids: number[]; last_logits_f32_b64: string; greedy48: number[] }>;
  perplexity: { text_ids_b64: string; window: number; stride: number; ppl: number };
};
const textIds = Array.from(new Uint32Array(Buffer.from(ref.perplexity.text_ids_b64, 'base64').buffer.slice(0)));

interface Figures {
  dtype: WeightDType;
  bytes: number;
  worstAbs: number;
  meanAbs: number;
  /** Per prompt: greedy tokens equal to HF's before the first difference (48: all). */
  greedySame: number[];
  perplexity: number;
}

async function measure(dtype: WeightDType): Promise<Figures> {
  const e = await engine();
  const model = await e.loadModel(dir, { dtype });
  try {
    let worst = 0;
    let sum = 0;
    let n = 0;
    const greedySame: number[] = [];
    for (const p of ref.prompts) {
      const want = decodeF32(p.last_logits_f32_b64);
      const got = (await model.logits(p.ids)).data;
      for (let i = 0; i < want.length; i++) {
        const d = Math.abs(got[i]! - want[i]!);
        worst = Math.max(worst, d);
        sum += d;
        n++;
      }
      const r = await model.generate(p.ids, { temperature: 0, maxNewTokens: 48, stopAtEos: false });
      const toks = r.sequences[0]!.tokens;
      const hf = p.greedy48.slice(p.ids.length);
      let same = 0;
      while (same < hf.length && toks[same] === hf[same]) same++;
      greedySame.push(same);
    }
    const { window, stride } = ref.perplexity;
    const ppl = (await model.perplexity(textIds, { window, stride })).perplexityHf;
    return { dtype, bytes: model.bytes, worstAbs: worst, meanAbs: sum / n, greedySame, perplexity: ppl };
  } finally {
    model.destroy();
  }
}

const figures = new Map<WeightDType, Figures>();
const of = async (d: WeightDType) => figures.get(d) ?? figures.set(d, await measure(d)).get(d)!;

test('f32 on the trained fixture: the baseline matches transformers (perplexity within 1e-4, greedy 48 on every prompt)', async () => {
  const f = await of('f32');
  assert.ok(
    Math.abs(f.perplexity / ref.perplexity.ppl - 1) < 1e-4,
    `f32 perplexity ${f.perplexity} vs HF ${ref.perplexity.ppl}`,
  );
  assert.equal(f.greedySame, [48, 48, 48, 48, 48]);
});

test('q8 on the trained fixture: perplexity within +0.5% of f32, greedy 48 identical on >= 3 of 5 prompts, ~1/4 of the bytes', async () => {
  const [f, q] = [await of('f32'), await of('q8')];
  assert.ok(q.perplexity <= f.perplexity * 1.005, `q8 perplexity ${q.perplexity} vs f32 ${f.perplexity}`);
  const whole = q.greedySame.filter((s) => s === 48).length;
  assert.ok(whole >= 3, `q8 greedy 48 identical on ${whole} of 5 prompts (${q.greedySame.join(', ')})`);
  assert.ok(q.bytes < f.bytes * 0.3, `q8 holds ${q.bytes} bytes, f32 ${f.bytes}`);
});

test('q4 on the trained fixture: perplexity within +3% of f32, ~1/6 of the bytes (f32 scales included)', async () => {
  const [f, q] = [await of('f32'), await of('q4')];
  assert.ok(q.perplexity <= f.perplexity * 1.03, `q4 perplexity ${q.perplexity} vs f32 ${f.perplexity}`);
  assert.ok(q.bytes < f.bytes * 0.2, `q4 holds ${q.bytes} bytes, f32 ${f.bytes}`);
});

test.after(async () => {
  const out = process.env.QUANT_QUALITY_JSON;
  if (!out) return;
  await of('f16');
  writeFileSync(out, JSON.stringify([...figures.values()], null, 1));
});

test.run();
