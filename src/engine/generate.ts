/**
 * Token generation, the entry points: generate (one prompt, one or more sequences) and
 * generateBatch (a prompt per sequence). A call validates its options (generate-options.ts), opens
 * its cache (the caller's session rows, or a temporary cache), builds the run's slots and sampler
 * state, and hands the run to the cached loop (scheduler.ts) or the uncached checking mode
 * (uncached.ts); sequences not handed over during the run are handed over at its end.
 */
import { AbortError, InvalidOptionError } from '../errors.js';
import { CallErrors } from '../gpu/call-errors.js';
import { Owned } from '../gpu/common.js';
import { checkVocabRows } from '../gpu/limits.js';
import { logprobsKernelFor, type LogprobsKernel } from '../kernels/logprobs.js';
import type { RowBans } from '../kernels/sampler.js';
import { checkSomeIdAllowed, hasDynamicBans } from '../sampling/bans.js';
import { checkOptions } from '../sampling/names.js';
import { deriveSeed, randomSeed } from '../sampling/options.js';
import {
  cacheRowsOf,
  eosIdsOf,
  GENERATE_OPTIONS,
  generationCapacity,
  seedsOf,
  sequenceOptions,
  validateGenerate,
  type GenerateOptions,
  type GenerateResult,
  type GenerateStats,
  type SequenceOptions,
} from './generate-options.js';
import type { KVCache } from './kvcache.js';
import { StepLogprobs } from './gen-logprobs.js';
import { ListenerGuard } from './listeners.js';
import type { ForwardPlan, GPT2Model } from './model.js';
import { generateCached } from './scheduler.js';
import { bansOf, handOver, newSlot, sequenceOf, type Run, type Slot } from './slots.js';
import { emptyStats } from './stats.js';
import { GenIO, now } from './step-io.js';
import { generateUncached } from './uncached.js';

// The option types and helpers keep their old home too (the package index, the Engine, bench).
export {
  DEFAULT_MAX_NEW_TOKENS,
  MAX_NEW_TOKENS_LIMIT,
  defaultPipelineDepth,
  generationCapacity,
  generationPart,
  samplingPart,
  validateGenerate,
} from './generate-options.js';
export type {
  FinishReason,
  GeneratedSequence,
  GenerateOptions,
  GenerateResult,
  GenerateStats,
  Joiner,
  SequenceDoneEvent,
  SequenceOptions,
  TokenEvent,
  TokenLogprob,
} from './generate-options.js';
export { JoinQueue } from './generate-options.js';

/**
 * Generates from `prompt` (text or ids). See GenerateOptions. Resolves with every sequence's new
 * tokens and text, the seed used, and timing statistics.
 */
export function generate(
  model: GPT2Model,
  prompt: string | readonly number[],
  opts: GenerateOptions = {},
): Promise<GenerateResult> {
  model.checkAlive();
  checkOptions(opts, GENERATE_OPTIONS, 'generation option', ['joiners']);
  const ids = model.promptIds(prompt);
  // A multi-row session continues every row (or the rows cacheRows picks) with this prompt unless told otherwise.
  const o =
    opts.cache && opts.numSequences === undefined
      ? { ...opts, numSequences: Array.isArray(opts.cacheRows) ? opts.cacheRows.length : opts.cache.rows }
      : opts;
  const { rows } = validateGenerate(o);
  return run(
    model,
    Array.from({ length: rows }, () => ids),
    o,
  );
}

/**
 * Several prompts (of any lengths) advanced together, one row each, in batched steps; sequence i
 * uses seed deriveSeed(seed, i) and equals a single generate() of prompt i with that seed.
 */
export function generateBatch(
  model: GPT2Model,
  prompts: Array<string | readonly number[]>,
  opts: Omit<GenerateOptions, 'numSequences'> = {},
): Promise<GenerateResult> {
  model.checkAlive();
  checkOptions(opts, GENERATE_OPTIONS, 'generation option', ['joiners']);
  if (!Array.isArray(prompts) || prompts.length === 0)
    throw new InvalidOptionError(
      `generateBatch needs a non-empty array of prompts, got ${JSON.stringify(prompts)?.slice(0, 80)}`,
    );
  const ids = prompts.map((p, i) => model.promptIds(p, `prompt ${i}`));
  const asked = (opts as GenerateOptions).numSequences;
  if (asked !== undefined && asked !== ids.length)
    throw new InvalidOptionError(
      `generateBatch runs one sequence per prompt: numSequences ${String(asked)} with ${ids.length} prompt(s); leave it out (or give each prompt as often as you want it run)`,
    );
  return run(model, ids, { ...opts, numSequences: ids.length });
}

/** A generation's validated inputs. */
interface RunSpec {
  seqOpts: SequenceOptions[];
  /** Steps the longest sequence needs; each sequence stops at its own count. */
  maxNew: number;
  depth: number;
  seed: number;
  /** Per sequence: opts.seeds, or deriveSeed(seed, i). */
  seeds: number[];
  /** The ids that are EOS (GenerateOptions.eosTokenId, default the model's). */
  eosIds: number[];
}

/** Validates everything a generation is given, before any GPU work (prompts included). */
function specOf(model: GPT2Model, prompts: number[][], opts: GenerateOptions): RunSpec {
  // the profile gives the default depth
  const withDepth = { ...opts, pipelineDepth: opts.pipelineDepth ?? model.profile.pipelineDepth };
  const { maxNew: sharedMaxNew, rows: R, depth: asked } = validateGenerate(withDepth);
  const V = model.config.vocab_size;
  const seqOpts = sequenceOptions(opts, R, V, sharedMaxNew);
  checkVocabRows(model.ctx, R, V, 'numSequences', 'sequences');
  const eosIds = eosIdsOf(opts, model.config.eos_token_id, V);
  seqOpts.forEach((o, i) =>
    checkSomeIdAllowed(o.sampling, eosIds, [...eosIds, ...o.stopTokenIds], V, R > 1 ? `sequence ${i}` : 'generate'),
  );
  // Bans that follow the ids (n-grams, bad words) are computed on the host between steps: no step
  // may be queued before the previous one's ids are known.
  const depth = seqOpts.some((o) => hasDynamicBans(o.sampling, eosIds)) ? 1 : asked;
  const maxNew = Math.max(...seqOpts.map((o) => o.maxNew));
  const given = opts.seeds === undefined ? undefined : seedsOf(opts.seeds, opts.seed, R);
  const seed = given?.[0] ?? opts.seed ?? randomSeed();
  const seeds = given ?? Array.from({ length: R }, (_, i) => deriveSeed(seed, i));
  prompts.forEach((p, i) => model.checkIds(p, R > 1 ? `prompt ${i}` : 'prompt'));
  if (opts.signal?.aborted) throw new AbortError('generation aborted before it started');
  return { seqOpts, maxNew, depth, seed, seeds, eosIds };
}

/** The cache a generation runs on, with the row of each sequence (acquired). */
interface RunCache {
  cache: KVCache;
  rows: number[];
  /** A temporary cache made for this generation (destroyed with it). */
  own: boolean;
}

/** The caller's session cache (its rows acquired), or a temporary cache just large enough. */
async function openCache(
  model: GPT2Model,
  prompts: number[][],
  opts: GenerateOptions,
  seqOpts: SequenceOptions[],
): Promise<RunCache> {
  const R = seqOpts.length;
  if (opts.cache) {
    if (opts.onOverflow !== undefined || opts.keep !== undefined) {
      throw new InvalidOptionError(
        'onOverflow and keep belong to the session: pass them to createSession()/createCache(), not to generate() with a cache',
      );
    }
    const cache = opts.cache;
    cache.checkUsable(model);
    const rows = cacheRowsOf(cache, opts.cacheRows, R);
    cache.acquire(model, rows);
    return { cache, rows, own: false };
  }
  if (opts.cacheRows !== undefined)
    throw new InvalidOptionError(
      'cacheRows picks rows of the cache given as `cache`; pass the cache too (or leave cacheRows out)',
    );
  const need = Math.max(...prompts.map((p, r) => p.length + seqOpts[r]!.maxNew));
  const capacity = generationCapacity(model.config, need, opts.keep !== undefined);
  const cache = await model.createCache({ rows: R, capacity, onOverflow: opts.onOverflow, keep: opts.keep });
  cache.acquire(model);
  return { cache, rows: Array.from({ length: R }, (_, r) => r), own: true };
}

/** A run whose listeners may be async (ListenerGuard): it ends once they have settled. */
function run(model: GPT2Model, prompts: number[][], opts: GenerateOptions): Promise<GenerateResult> {
  const guard = new ListenerGuard(opts.signal);
  return guard.settle(runSteps(model, prompts, guard.options(opts)));
}

async function runSteps(model: GPT2Model, prompts: number[][], opts: GenerateOptions): Promise<GenerateResult> {
  const tCall = now();
  const spec = specOf(model, prompts, opts);
  const { cache, rows, own } = await openCache(model, prompts, opts, spec.seqOpts);
  const listeners = { onToken: opts.onToken, onSequenceDone: opts.onSequenceDone };
  // Bans look at what the penalties count: the row's context and the prompt, then the new tokens.
  const bans = rows.map((row, i) => bansOf(spec.seqOpts[i]!, spec.eosIds, [...cache.tokens[row]!, ...prompts[i]!]));
  const slots = rows.map((row, i) => newSlot(model.tokenizer, row, spec.seqOpts[i]!, listeners, bans[i]!.slot));
  const stats = emptyStats(rows.length);
  const owned = new Owned(model.ctx);
  const errors = new CallErrors(model.ctx);
  const plans: ForwardPlan[] = [];
  const pending: Array<Promise<void>> = [];
  let finished = false; // the plans' work ended without an error: the cache may keep them
  const result = (): GenerateResult => ({
    promptIds: prompts[0]!,
    seed: spec.seed,
    seeds: spec.seeds,
    sequences: slots.map(sequenceOf),
    stats,
  });
  try {
    if (spec.maxNew > 0) {
      const parts = { slots, stats, owned, plans, pending, tCall, errors };
      const init = bans.map((b) => b.init);
      const lp = opts.logprobs === undefined ? undefined : await logprobsKernelFor(model.ctx, model.profile.logprobsWg);
      const r = errors.run(() => startRun(model, { cache, rows, own }, prompts, opts, spec, init, parts, lp));
      await (opts.useCache === false ? generateUncached(r) : generateCached(r));
      await errors.check();
    }
    finished = true;
    handOverRest(slots, cache, stats);
    return result();
  } catch (e) {
    if (e instanceof AbortError) {
      // What the sequences produced before the abort goes with the error.
      e.sequences = slots.map((s) => ({
        tokens: [...s.out],
        text: s.text,
        ...(s.logprobs ? { logprobs: [...s.logprobs] } : {}),
      }));
      e.tokens = e.sequences[0]?.tokens ?? [];
      e.text = e.sequences[0]?.text ?? '';
    }
    throw model.failure(e, 'this generation');
  } finally {
    await Promise.allSettled(pending);
    // A session's next turn takes these plans instead of building them again (keepPlan).
    for (const p of plans)
      if (finished && !own) model.keepPlan(p);
      else p.destroy();
    owned.destroy();
    cache.release(slots.filter((s) => !s.released).map((s) => s.row)); // a released row may be another generation's now
    if (own) cache.destroy();
  }
}

/** What run() made before the run starts: its slots, figures, owner and lists of plans and pending work. */
type RunParts = Pick<Run, 'slots' | 'stats' | 'owned' | 'plans' | 'pending' | 'tCall' | 'errors'>;

/**
 * The run's record: the sampler state (each slot's options and seed; penalties count the prompt
 * and whatever the session already holds), the staging ring for the 4-byte-per-slot read-back.
 */
function startRun(
  model: GPT2Model,
  { cache, own }: RunCache,
  prompts: number[][],
  opts: GenerateOptions,
  spec: RunSpec,
  bans: RowBans[],
  parts: RunParts,
  lpKernel?: LogprobsKernel,
): Run {
  const { slots, owned } = parts;
  const R = slots.length;
  const rules = {
    eosIds: spec.eosIds,
    stopAtEos: opts.stopAtEos ?? true,
    includeStop: opts.includeStopString ?? true,
    check: () => model.checkAlive('this generation'),
  };
  const kernel = model.kernels.sampler;
  const sampling = spec.seqOpts.map((o) => o.sampling);
  // The sampler latches a row at the first EOS id (the others end it on the host alone).
  const sampler = kernel.createState(owned, R, sampling, {
    seeds: spec.seeds,
    eosId: spec.eosIds[0]!,
    stopAtEos: rules.stopAtEos,
    bans,
  });
  slots.forEach((s, i) => kernel.addCounts(sampler, i, [...cache.tokens[s.row]!, ...prompts[i]!]));
  const logprobs = lpKernel && new StepLogprobs(lpKernel, owned, R, opts.logprobs!);
  const staging = Array.from({ length: spec.depth }, (_, i) =>
    owned.buffer(`ids.staging${i}`, R * 4 + (logprobs?.bytes ?? 0), GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST),
  );
  // With onSequenceDone and a session cache, each sequence is handed over as soon as it is final.
  const early = opts.onSequenceDone !== undefined && !own;
  return {
    ...parts,
    model,
    cache,
    prompts,
    opts,
    rules,
    sampler,
    ...(logprobs ? { logprobs } : {}),
    staging,
    io: new GenIO(model, parts.errors),
    depth: spec.depth,
    maxNew: spec.maxNew,
    early,
    joiners: early ? opts.joiners : undefined,
  };
}

/** Hands over the sequences not handed over during the run, with the run's final figures. */
function handOverRest(slots: Slot[], cache: KVCache, stats: GenerateStats): void {
  slots.forEach((slot, i) => {
    if (!slot.released) handOver(slot, i, cache, { ...stats });
  });
}
