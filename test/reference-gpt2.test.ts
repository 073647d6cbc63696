import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { forward64, loadTensors } from './reference/gpt2.js';
import { decodeF32, tinyCheckpoint, tinyReference } from './fixtures-util.js';

/** Largest |a - e| over all elements (lengths must match). */
function maxAbs(a: ArrayLike<number>, e: ArrayLike<number>): number {
  assert.is(a.length, e.length, 'length');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - e[i]!));
  return Number.isNaN(m) ? Infinity : m;
}

test('forward64 matches HF logits of hf-gpt2-tiny at every position of the first prompt', async () => {
  const ckpt = await tinyCheckpoint();
  const w = await loadTensors(ckpt);
  const ref = tinyReference();
  const p = ref.prompts[0]!;
  const all = decodeF32(p.all_logits_f32_b64!);
  const V = ckpt.config.vocab_size;
  assert.is(all.length, p.ids.length * V);
  const got = forward64(w, ckpt.config, p.ids);
  const err = maxAbs(got, all);
  assert.ok(err <= 1e-3, `all_logits max abs error ${err} > 1e-3`);
});

test('forward64 matches HF last-position logits of every prompt', async () => {
  const ckpt = await tinyCheckpoint();
  const w = await loadTensors(ckpt);
  const V = ckpt.config.vocab_size;
  for (const p of tinyReference().prompts) {
    const got = forward64(w, ckpt.config, p.ids);
    const last = got.subarray((p.ids.length - 1) * V);
    const err = maxAbs(last, decodeF32(p.last_logits_f32_b64));
    assert.ok(err <= 1e-3, `"${p.text.slice(0, 20)}...": last_logits max abs error ${err} > 1e-3`);
  }
});

test.run();
