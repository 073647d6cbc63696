/**
 * The prompt's step of a cached run: each slot's prompt goes into its cache row's context (the
 * row shifted first when context plus prompt pass the window), then one submit feeds every row's
 * pending tokens and samples every slot's first token into the decode plan's ids.
 *
 * One prompt on empty rows (batched sampling, a group's fresh sessions) is prefilled once, into a
 * scratch 1-row cache, and its K/V copied into every row on the GPU.
 */
import { ContextOverflowError } from '../errors.js';
import type { GpuTensor } from '../gpu/common.js';
import type { KVCache } from './kvcache.js';
import { sampleDispatches } from './gen-logprobs.js';
import { ForwardPlan, rowMeta } from './model.js';
import { feedPending, type Run, type StepTokens } from './slots.js';
import { now, type StepQueue } from './step-io.js';

/**
 * Submits the prompt's step as the first of `steps`, its sampler writing into `outIds`; returns
 * when its submit began (the set-up ends there).
 */
export async function submitPrompt(run: Run, outIds: GpuTensor, steps: StepQueue): Promise<number> {
  const shared = run.slots.length > 1 && samePromptOnEmptyRows(run);
  placePrompts(run);
  return shared ? submitShared(run, outIds, steps) : run.errors.run(() => submitRows(run, outIds, steps));
}

/** Whether every slot has the same prompt and an empty cache row. */
function samePromptOnEmptyRows(run: Run): boolean {
  const [first] = run.prompts as [number[]];
  const same = run.prompts.every((p) => p.length === first.length && p.every((t, i) => t === first[i]));
  return same && run.slots.every((s) => run.cache.lengths[s.row] === 0 && run.cache.tokens[s.row]!.length === 0);
}

/**
 * Appends each slot's prompt to its cache row's context. Where context plus prompt pass the
 * window, the row keeps the most recent `keep` tokens of both, none held (or, with the cache's
 * policy 'error', ContextOverflowError).
 */
function placePrompts(run: Run): void {
  const { cache, stats } = run;
  run.slots.forEach((slot, i) => {
    const prompt = run.prompts[i]!;
    const context = cache.tokens[slot.row]!.length;
    if (context + prompt.length > cache.window) {
      if (cache.onOverflow === 'error') {
        throw new ContextOverflowError(
          `prompt of ${prompt.length} tokens plus ${context} context tokens passes the context window of ${cache.window} tokens; shorten the prompt or use onOverflow: 'shift'`,
        );
      }
      cache.append(slot.row, prompt);
      cache.shift(slot.row); // keep < window
      stats.shifts++;
    } else {
      cache.append(slot.row, prompt);
    }
  });
}

/** Every row feeds its pending tokens (all of them after a shift) in one plan. */
function submitRows(run: Run, outIds: GpuTensor, steps: StepQueue): number {
  const { model, cache, slots } = run;
  const R = slots.length;
  const step: StepTokens = { ids: [], meta: [] };
  const last = new Uint32Array(R);
  slots.forEach((slot, i) => {
    feedPending(cache, slot.row, step);
    last[i] = step.ids.length - 1;
  });
  // A session's prompt plan is kept for its next turns: bucketed, so that other lengths reuse it.
  const plan = model.takePlan(cache, step.ids.length, R, { bucket: run.opts.cache !== undefined });
  run.plans.push(plan);
  plan.write({ ids: step.ids, meta: Uint32Array.from(step.meta), lastIdx: last });
  const sample = sampleDispatches(run, run.owned, plan.logits, outIds);
  const tSubmit = now();
  steps.submit([...plan.dispatches, ...sample]);
  return tSubmit;
}

/**
 * The one prompt of every row prefilled once, in row 0 of a scratch 1-row cache, whose K/V the
 * same submit copies into every row; the scratch cache is freed once that work is done.
 */
async function submitShared(run: Run, outIds: GpuTensor, steps: StepQueue): Promise<number> {
  const scratch = await run.model.createCache({ rows: 1, capacity: run.cache.capacity, kvDtype: run.cache.kvDtype });
  return run.errors.run(() => submitSharedOn(run, scratch, outIds, steps));
}

/** submitShared once its scratch cache is made (its GPU work in the generation's error scopes). */
function submitSharedOn(run: Run, scratch: KVCache, outIds: GpuTensor, steps: StepQueue): number {
  const { model, cache, slots } = run;
  const R = slots.length;
  const rows = slots.map((s) => s.row);
  const seq = cache.tokens[rows[0]!]!;
  let plan: ForwardPlan;
  try {
    plan = new ForwardPlan(model, scratch, seq.length, R);
  } catch (e) {
    scratch.destroy();
    throw e;
  }
  run.plans.push(plan);
  plan.write({ ids: seq, meta: rowMeta(0, 0, seq.length), lastIdx: new Uint32Array(R).fill(seq.length - 1) });
  for (const row of rows) cache.commit(row); // every row's context is `seq`
  const sample = sampleDispatches(run, run.owned, plan.logits, outIds);
  const tSubmit = now();
  steps.submit([...plan.dispatches, ...sample], (enc) => copyPrefix(enc, scratch, cache, rows, seq.length));
  run.pending.push(model.ctx.drain().then(() => scratch.destroy()));
  return tSubmit;
}

/** Copies the K/V of the first `tokens` slots of the scratch cache's row 0 into `rows` of `cache`, every layer. */
function copyPrefix(enc: GPUCommandEncoder, scratch: KVCache, cache: KVCache, rows: number[], tokens: number): void {
  const slotBytes = cache.owner.config.n_embd * (cache.kvDtype === 'f16' ? 2 : 4); // scratch has cache's dtype
  const rowBytes = cache.capacity * slotBytes;
  const used = tokens * slotBytes;
  for (let l = 0; l < cache.owner.config.n_layer; l++) {
    for (const row of rows) {
      enc.copyBufferToBuffer(scratch.k[l]!, 0, cache.k[l]!, row * rowBytes, used);
      enc.copyBufferToBuffer(scratch.v[l]!, 0, cache.v[l]!, row * rowBytes, used);
    }
  }
}
