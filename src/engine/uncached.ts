/**
 * The uncached checking mode (GenerateOptions.useCache false): every step recomputes each slot's
 * whole context from position 0 and reads the sampled ids back before the next. Its contexts
 * follow the cached path's window rule (keep the most recent `keep` tokens), so both see the same
 * windows.
 */
import { AbortError, ContextOverflowError } from '../errors.js';
import type { GpuTensor } from '../gpu/common.js';
import { sampleDispatches } from './gen-logprobs.js';
import { ForwardPlan } from './model.js';
import type { TokenLogprob } from './generate-options.js';
import { acceptStep, writeBans, type Run, type StepTokens } from './slots.js';
import { now } from './step-io.js';

/** Runs a generation without the KV cache; the rows' contexts are left for a continued session. */
export async function generateUncached(run: Run): Promise<void> {
  const { cache, slots, stats, io, opts } = run;
  const contexts = startContexts(run);
  const R = slots.length;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const outIds: GpuTensor = {
    buffer: run.owned.buffer('uncached.ids', R * 4, usage),
    offset: 0,
    shape: [R],
    dtype: 'u32',
  };
  let decodeStart = 0;
  for (let step = 0; step < run.maxNew && !slots.every((s) => s.finished); step++) {
    if (opts.signal?.aborted) throw new AbortError(`generation aborted after ${step} steps`);
    const { ids: got, logprobs, tSubmit } = await recompute(run, contexts, outIds);
    if (step === 0) {
      decodeStart = now();
      stats.firstTokenMs = decodeStart - run.tCall;
      stats.prefillMs = decodeStart - tSubmit;
      stats.setupMs = tSubmit - run.tCall;
    }
    // Only the slots that take this step's token extend their context: a final slot's row keeps
    // what it produced (as the cached path records it), whatever the sampler drew for it since.
    const taking = slots.map((s) => !s.finished);
    acceptStep(slots, got, run.rules, logprobs);
    contexts.forEach((context, i) => {
      if (taking[i]) extend(run, context, got[i]!);
    });
    stats.steps = step + 1;
  }
  const end = now();
  const decodeSteps = stats.steps - 1;
  stats.decodeMsPerToken = decodeSteps > 0 ? (end - decodeStart) / decodeSteps : 0;
  stats.tokensPerSecond = decodeSteps > 0 ? (decodeSteps * R) / ((end - decodeStart) / 1000) : 0;
  const produced = Math.max(1, stats.steps);
  stats.submitsPerStep = io.submits / produced;
  stats.dispatchesPerStep = io.dispatches / produced;
  stats.readbackBytesPerToken = io.bytesReadBack / produced / R;
  // The cache holds no valid K/V now (every step reset it); keep the context so a continued
  // session re-encodes it.
  slots.forEach((slot, i) => cache.reset(slot.row, contexts[i]!));
}

/** Each slot's context: its row's plus its prompt, cut to the most recent `keep` tokens past the window. */
function startContexts(run: Run): number[][] {
  const { cache, stats } = run;
  return run.slots.map((slot, i) => {
    const prompt = run.prompts[i]!;
    const context = [...cache.tokens[slot.row]!, ...prompt];
    if (context.length <= cache.window) return context;
    if (cache.onOverflow === 'error')
      throw new ContextOverflowError(
        `prompt of ${prompt.length} tokens plus context passes the context window of ${cache.window} tokens`,
      );
    stats.shifts++;
    return context.slice(-Math.min(cache.keep, cache.window - 1));
  });
}

/**
 * Appends a sampled token to a context. Like the cached path, a context that would pass the window
 * keeps its most recent `keep` tokens before the new one.
 */
function extend(run: Run, context: number[], token: number): void {
  const { cache } = run;
  context.push(token);
  if (context.length <= cache.window) return;
  context.splice(0, context.length - 1 - cache.keep);
  run.stats.shifts++;
}

/**
 * One step: every slot's whole context through a plan made for it, sampled into `outIds`; resolves
 * with the ids and when the submit began.
 */
async function recompute(
  run: Run,
  contexts: number[][],
  outIds: GpuTensor,
): Promise<{ ids: Uint32Array; logprobs?: TokenLogprob[]; tSubmit: number }> {
  const { model, cache, slots, io } = run;
  const R = slots.length;
  for (const slot of slots) cache.reset(slot.row);
  const step: StepTokens = { ids: [], meta: [] };
  const last = new Uint32Array(R);
  contexts.forEach((context, i) => {
    context.forEach((t, p) => {
      step.ids.push(t);
      step.meta.push(slots[i]!.row, p);
    });
    last[i] = step.ids.length - 1;
  });
  const plan = run.errors.run(() => new ForwardPlan(model, cache, step.ids.length, R));
  const staging = run.staging[0]!;
  try {
    const tSubmit = run.errors.run(() => {
      plan.write({ ids: step.ids, meta: Uint32Array.from(step.meta), lastIdx: last });
      const sample = sampleDispatches(run, run.owned, plan.logits, outIds);
      writeBans(run);
      const t = now();
      io.submit([...plan.dispatches, ...sample], (enc) => {
        enc.copyBufferToBuffer(outIds.buffer, 0, staging, 0, R * 4);
        run.logprobs?.copy(enc, staging, R * 4);
      });
      return t;
    });
    const words = new Uint32Array(await io.read(staging, R * 4 + (run.logprobs?.bytes ?? 0)));
    const logprobs = run.logprobs?.decode(words);
    return { ids: words, ...(logprobs ? { logprobs } : {}), tSubmit };
  } finally {
    plan.destroy();
  }
}
