/**
 * GPU time per dispatch of one decode step (the benchmark's per-kernel table): each dispatch of
 * the step's plan, and the sampler's after it, in its own compute pass with timestamp writes.
 * The passes add overhead, so the sum exceeds a real step; the split between dispatches is what
 * it is for. Needs the timestamp-query feature.
 */
import { Owned } from '../gpu/common.js';
import type { Dispatch, KernelFamily } from '../gpu/common.js';
import { validateSampling } from '../sampling/options.js';
import { generationCapacity } from './generate.js';
import { decodeMeta, ForwardPlan, type GPT2Model } from './model.js';

/** One dispatch of the timed step: its label (`h.<layer>.attn`, `lm_head[2]`, ...), family and mean GPU ms. */
export interface DispatchTime {
  label: string;
  family: KernelFamily;
  ms: number;
}

/**
 * Times the dispatches of one decode step of B rows at position `promptTokens` (or the last slot
 * when the prompt fills the window), on a cache sized like a generation of `need` tokens (the same
 * slots, so the same attention work and the same binding-size limits): a warm-up run, then the
 * mean over `reps` runs. Throws if the device has no timestamp-query feature.
 */
export async function timeDecodeStep(
  model: GPT2Model,
  B: number,
  promptTokens: number,
  need: number,
  reps = 2,
): Promise<DispatchTime[]> {
  const ctx = model.ctx;
  if (!ctx.features.timestampQuery) throw new Error('timeDecodeStep needs the timestamp-query feature');
  const owned = new Owned(ctx);
  const cache = await model.createCache({ rows: B, capacity: generationCapacity(model.config, need, false) });
  const pos = Math.min(promptTokens, cache.window - 1);
  const plan = new ForwardPlan(model, cache, B, B, { decode: true });
  try {
    const sampling = validateSampling({ temperature: 1 }, model.config.vocab_size);
    const state = model.kernels.sampler.createState(owned, B, sampling, {
      seeds: Array.from({ length: B }, (_, i) => i),
      eosId: model.config.eos_token_id,
      stopAtEos: false,
    });
    plan.write({ ids: new Array(B).fill(1), meta: decodeMeta(new Array<number>(B).fill(pos)) });
    const list: Dispatch[] = [
      ...plan.dispatches,
      ...model.kernels.sampler.bind(owned, state, { logits: plan.logits, outIds: plan.ids }),
    ];
    const ms = await timeDispatches(model, owned, list, reps);
    return list.map((d, i) => ({ label: d.label, family: d.family, ms: ms[i]! }));
  } finally {
    plan.destroy();
    owned.destroy();
    cache.destroy();
  }
}

/** Mean GPU ms of each dispatch over `reps` timed runs after a warm-up, each in its own pass. */
async function timeDispatches(model: GPT2Model, owned: Owned, list: Dispatch[], reps: number): Promise<number[]> {
  const ctx = model.ctx;
  const n = list.length;
  const qs = ctx.device.createQuerySet({ type: 'timestamp', count: 2 * n });
  const resolve = owned.buffer('ts.resolve', 16 * n, GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC);
  const ms = new Array<number>(n).fill(0);
  try {
    for (let rep = 0; rep <= reps; rep++) {
      const enc = ctx.device.createCommandEncoder();
      list.forEach((d, i) => {
        const pass = enc.beginComputePass({
          timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
        });
        pass.setPipeline(d.pipeline);
        pass.setBindGroup(0, d.bindGroup);
        pass.dispatchWorkgroups(...d.workgroups);
        pass.end();
      });
      enc.resolveQuerySet(qs, 0, 2 * n, resolve, 0);
      ctx.submit([enc.finish()]);
      const ts = new BigUint64Array(await ctx.readBuffer(resolve, 0, 16 * n));
      if (rep === 0) continue; // warm-up
      for (let i = 0; i < n; i++) ms[i]! += Number(ts[2 * i + 1]! - ts[2 * i]!) / 1e6 / reps;
    }
    return ms;
  } finally {
    qs.destroy();
  }
}
