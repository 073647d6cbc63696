/**
 * Token generation: prefill, then a pipelined decode loop in which the chosen ids never leave the
 * GPU except for a 4-byte-per-row read-back that feeds the caller.
 *
 * Step s (s >= 1) is one submit: [forward T=R tokens | sampler -> decode.ids | copy ids -> staging]
 * The sampler writes each row's id straight into the decode plan's `ids` input, so step s+1 can be
 * queued before step s's id reaches the CPU; up to `pipelineDepth` steps are in flight, each with
 * its own staging buffer. Positions are written with queue.writeBuffer (ordered with submits).
 *
 * Context window: when a row's next position would reach the window, the loop drains the pipeline
 * and shifts that row (keeps its most recent `keep` tokens, re-encodes them from position 0), or
 * throws ContextOverflowError when the cache's policy is 'error'.
 */
import { AbortError, ContextOverflowError, InvalidOptionError, ShapeError } from '../errors.js';
import { Owned } from '../gpu/common.js';
import type { Dispatch } from '../gpu/common.js';
import {
  deriveSeed,
  randomSeed,
  validateSampling,
  type NormalizedSampling,
  type SamplingOptions,
} from '../sampling/options.js';
import type { KVCache } from './kvcache.js';
import { decodeMeta, ForwardPlan, PARKED_ROW, rowMeta, type GPT2Model } from './model.js';
import { TextStreamer } from './tokenizer.js';

export const MAX_NEW_TOKENS_LIMIT = 1_000_000;
/** GenerateOptions.maxNewTokens when not given. */
export const DEFAULT_MAX_NEW_TOKENS = 30;

export interface GenerateOptions extends SamplingOptions {
  /** New tokens per sequence (default 30; 0 returns at once; at most 1,000,000). */
  maxNewTokens?: number;
  /** Independent continuations of the prompt, each with seed deriveSeed(seed, i) (default 1). */
  numSequences?: number;
  /** Per-sequence seeds instead of deriveSeed(seed, i): sequence i draws with seeds[i] (one per sequence; not with `seed`). */
  seeds?: number[];
  /**
   * Per-sequence options: sequence i runs with the shared sampling options, maxNewTokens and
   * stopStrings overridden by perSequence[i] (not seed: use `seeds`). One entry per sequence.
   */
  perSequence?: Array<Omit<SamplingOptions, 'seed'> & Pick<GenerateOptions, 'maxNewTokens' | 'stopStrings'>>;
  /** Stop a sequence when it emits EOS (50256). Default true. */
  stopAtEos?: boolean;
  /** Stop a sequence once its text contains one of these; later tokens are dropped. */
  stopStrings?: string[];
  /** false: recompute the whole sequence every step without the KV cache (a checking mode). */
  useCache?: boolean;
  /** Continue this session cache (rows must equal numSequences unless cacheRows picks some); default: a temporary cache. */
  cache?: KVCache;
  /**
   * With `cache`: the cache rows this generation advances, sequence i in row cacheRows[i] (distinct
   * rows; default every row, in order). Other rows keep their contents and may be advanced by
   * another generation at the same time: the conversations of a session group, batched per call.
   */
  cacheRows?: number[];
  /** Cancels between steps; the call rejects with AbortError and frees its buffers. */
  signal?: AbortSignal;
  /** Called for every new token as soon as it is read back. */
  onToken?: (ev: TokenEvent) => void;
  /**
   * Called once per sequence as soon as it is final (EOS, its maxNewTokens, a stop string), with
   * its tokens and text and the run's statistics so far. With a session's `cache` (cached mode)
   * its cache row is released at that moment: the row's history is final, the row is free for
   * another generation while the others go on, and the rest of this run no longer writes it.
   * Otherwise (a temporary cache, useCache false) it is called for every sequence at the end.
   */
  onSequenceDone?: (ev: SequenceDoneEvent) => void;
  /**
   * @internal Session groups' continuous batching: with onSequenceDone and a session cache, called at step boundaries
   * while some sequences' slots are parked (their sequence handed over); returns new sequences to
   * run in those slots (continuous batching). See Admission.
   */
  admit?: (slots: number[]) => Admission[];
  /**
   * Steps queued ahead of the read-back (1 = no pipelining). Default: 3 on GPUs; 1 on CPU adapters
   * (lavapipe), where the host's work for the steps queued ahead competes with the driver's
   * worker threads for the same cores (measured 5-10% slower decode with 3, BENCHMARKS.md).
   */
  pipelineDepth?: number;
  /** For a temporary cache: what to do at the context window ('shift' default, or 'error'). */
  onOverflow?: 'shift' | 'error';
  /** For a temporary cache: tokens kept by a shift (default half the window). */
  keep?: number;
}

export interface TokenEvent {
  row: number;
  token: number;
  /** New text completed by this token (may be '' while a UTF-8 character is incomplete). */
  text: string;
  /** Index of this token among the row's new tokens. */
  index: number;
}

/**
 * A sequence joining a run in flight (GenerateOptions.admit): it takes parked slot `slot` (its
 * onToken / onSequenceDone events carry that index from then on), in cache row `row` (free, its
 * context plus `ids` within the window), with its own options and seed.
 */
export interface Admission extends SequenceOptions {
  slot: number;
  row: number;
  ids: number[];
  seed: number;
}

export interface SequenceDoneEvent {
  /** The sequence's index (the row of the result, not of the cache). */
  row: number;
  sequence: GeneratedSequence;
  /** The run's statistics when the sequence finished (steps so far; decode figures so far). */
  stats: GenerateStats;
}

export type FinishReason = 'eos' | 'length' | 'stop';

export interface GeneratedSequence {
  tokens: number[];
  text: string;
  finishReason: FinishReason;
}

export interface GenerateStats {
  /**
   * Host work before the prompt reached the GPU: the temporary cache, sampler state, the prefill
   * and decode plans (buffers, bind groups). first_token_ms = setup_ms + prefill_ms.
   */
  setup_ms: number;
  /** From the prompt's submit to its first sampled ids on the CPU: the GPU's prefill, sampling and the read-back. */
  prefill_ms: number;
  /** From the call to the first sampled ids on the CPU (setup included): what a caller waits. */
  first_token_ms: number;
  decode_ms_per_token: number;
  tokens_per_s: number;
  readback_bytes_per_token: number;
  steps: number;
  /**
   * Sequences advanced in the same steps: numSequences, or the number of session-group turns
   * merged into this run (tokens_per_s counts all of them).
   */
  batch_rows: number;
  shifts: number;
  /** Submits per decode step. */
  submits: number;
  /** Dispatches per decode step. */
  dispatches_per_step: number;
}

export interface GenerateResult {
  /** The prompt's ids (of row 0 when rows had different prompts). */
  promptIds: number[];
  /** Seed of each sequence: deriveSeed(seed, i), or GenerateOptions.seeds. */
  seeds: number[];
  sequences: GeneratedSequence[];
  seed: number;
  stats: GenerateStats;
}

/** Option keys that belong to generation; the rest are sampling options (validated as such). */
const GENERATE_KEYS = new Set([
  'maxNewTokens',
  'numSequences',
  'seeds',
  'perSequence',
  'stopAtEos',
  'stopStrings',
  'useCache',
  'cache',
  'cacheRows',
  'signal',
  'onToken',
  'onSequenceDone',
  'admit',
  'pipelineDepth',
  'onOverflow',
  'keep',
]);

/** The sampling part of generation options (unknown keys stay in, so validateSampling names them). */
export function samplingPart(o: object): SamplingOptions {
  return Object.fromEntries(
    Object.entries(o).filter(([k, v]) => !GENERATE_KEYS.has(k) && v !== undefined),
  ) as SamplingOptions;
}

/** The generation part of options (what samplingPart leaves out). */
export function generationPart(o: GenerateOptions): GenerateOptions {
  return Object.fromEntries(Object.entries(o).filter(([k]) => GENERATE_KEYS.has(k))) as GenerateOptions;
}

/**
 * Slots of the cache a generation creates for itself: only as many as it can use (need = longest
 * prompt + new tokens; rows x capacity x C must fit one binding, so this is what lets batch 64 of
 * gpt2 run on a 128 MiB adapter), the full window when it may shift (it will pass n_positions, or
 * the caller chose `keep`).
 */
export function generationCapacity(cfg: { n_positions: number }, need: number, mayShift: boolean): number {
  return need >= cfg.n_positions || mayShift ? cfg.n_positions : Math.max(2, need);
}

/** Steps in flight when GenerateOptions.pipelineDepth is not given (see there). */
export function defaultPipelineDepth(cpuAdapter: boolean): number {
  return cpuAdapter ? 1 : 3;
}

/** Validates the non-sampling options; throws InvalidOptionError naming the option. */
export function validateGenerate(
  o: GenerateOptions,
  cpuAdapter = false,
): { maxNew: number; rows: number; depth: number } {
  const maxNew = o.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
  if (!Number.isInteger(maxNew) || maxNew < 0 || maxNew > MAX_NEW_TOKENS_LIMIT) {
    throw new InvalidOptionError(`maxNewTokens must be an integer in [0, ${MAX_NEW_TOKENS_LIMIT}], got ${maxNew}`);
  }
  const rows = o.numSequences ?? 1;
  if (!Number.isInteger(rows) || rows < 1 || rows > 1024) {
    throw new InvalidOptionError(`numSequences must be an integer in [1, 1024], got ${rows}`);
  }
  const depth = o.pipelineDepth ?? defaultPipelineDepth(cpuAdapter);
  if (!Number.isInteger(depth) || depth < 1 || depth > 16) {
    throw new InvalidOptionError(`pipelineDepth must be an integer in [1, 16], got ${depth}`);
  }
  if (
    o.stopStrings !== undefined &&
    (!Array.isArray(o.stopStrings) || o.stopStrings.some((s) => typeof s !== 'string' || s.length === 0))
  ) {
    throw new InvalidOptionError(
      `stopStrings must be an array of non-empty strings, got ${JSON.stringify(o.stopStrings)}`,
    );
  }
  if (o.stopAtEos !== undefined && typeof o.stopAtEos !== 'boolean') {
    throw new InvalidOptionError(`stopAtEos must be a boolean, got ${String(o.stopAtEos)}`);
  }
  for (const k of ['onToken', 'onSequenceDone', 'admit'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'function')
      throw new InvalidOptionError(`${k} must be a function, got ${typeof o[k]}`);
  }
  return { maxNew, rows, depth };
}

const now = (): number => (globalThis.performance ?? Date).now();

/**
 * The cache rows a generation advances (GenerateOptions.cacheRows), validated: R distinct rows of
 * the cache; without cacheRows every row in order, which needs R == cache.rows.
 */
function cacheRowsOf(cache: KVCache, rows: unknown, R: number): number[] {
  if (rows === undefined) {
    if (cache.rows !== R)
      throw new InvalidOptionError(
        `the cache has ${cache.rows} rows but numSequences is ${R}; they must match (or pick ${R} of its rows with cacheRows)`,
      );
    return Array.from({ length: R }, (_, r) => r);
  }
  if (!Array.isArray(rows) || rows.length === 0) {
    throw new InvalidOptionError(
      `cacheRows must be a non-empty array of row indices of the cache, got ${JSON.stringify(rows)?.slice(0, 80)}`,
    );
  }
  const seen = new Set<number>();
  rows.forEach((r: unknown, i) => {
    if (typeof r !== 'number' || !Number.isInteger(r) || r < 0 || r >= cache.rows) {
      throw new InvalidOptionError(
        `cacheRows[${i}] must be an integer in [0, ${cache.rows - 1}] (the cache has ${cache.rows} rows), got ${String(r)}`,
      );
    }
    if (seen.has(r))
      throw new InvalidOptionError(`cacheRows lists row ${r} twice; each sequence needs a row of its own`);
    seen.add(r);
  });
  if (rows.length !== R)
    throw new InvalidOptionError(`cacheRows lists ${rows.length} rows for ${R} sequences; give one row per sequence`);
  return rows as number[];
}

/**
 * What one generation submits and reads back, counted by the generation itself: the device's
 * counters (ctx.stats) also count every other generation running on the model at the same time
 * (interleaved sessions), so per-step figures taken from them would be wrong there.
 */
class GenIO {
  submits = 0;
  dispatches = 0;
  bytesReadBack = 0;
  constructor(private readonly model: GPT2Model) {}
  submit(dispatches: readonly Dispatch[], after?: (enc: GPUCommandEncoder) => void): void {
    this.model.submit(dispatches, after);
    this.submits++;
    this.dispatches += dispatches.length;
  }
  async read(buf: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    const ab = await this.model.ctx.mapCopy(buf, bytes);
    this.bytesReadBack += bytes;
    return ab;
  }
}

/** GenerateOptions.seeds, validated: R integers in [0, 2^53), and no `seed` beside them. */
function seedsOf(seeds: unknown, seed: unknown, R: number): number[] {
  if (seed !== undefined)
    throw new InvalidOptionError("give seed or seeds, not both (seeds sets every sequence's seed)");
  if (!Array.isArray(seeds) || seeds.length !== R) {
    throw new InvalidOptionError(
      `seeds must be an array of one seed per sequence (${R}), got ${JSON.stringify(seeds)?.slice(0, 80)}`,
    );
  }
  seeds.forEach((x: unknown, i) => {
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x >= 2 ** 53)
      throw new InvalidOptionError(`seeds[${i}] must be an integer in [0, 2^53), got ${String(x)}`);
  });
  return seeds as number[];
}

/** One sequence's options: sampling (normalised), new tokens and stop strings. */
export interface SequenceOptions {
  sampling: NormalizedSampling;
  maxNew: number;
  stopStrings: string[] | undefined;
}

/**
 * Every sequence's options: the shared ones, or (GenerateOptions.perSequence) the shared ones
 * overridden per sequence, validated with the sequence named.
 */
function sequenceOptions(opts: GenerateOptions, R: number, V: number, maxNew: number): SequenceOptions[] {
  const shared = samplingPart(opts);
  const sampling = validateSampling(shared, V); // the shared options' own errors first
  const per = opts.perSequence;
  if (per === undefined) return Array.from({ length: R }, () => ({ sampling, maxNew, stopStrings: opts.stopStrings }));
  if (!Array.isArray(per) || per.length !== R) {
    throw new InvalidOptionError(
      `perSequence must be an array of one options object per sequence (${R}), got ${JSON.stringify(per)?.slice(0, 80)}`,
    );
  }
  const list = per.map((o: unknown, i) => {
    if (typeof o !== 'object' || o === null || Array.isArray(o))
      throw new InvalidOptionError(
        `perSequence[${i}] must be an options object, got ${JSON.stringify(o)?.slice(0, 60)}`,
      );
    if ('seed' in o)
      throw new InvalidOptionError(`perSequence[${i}] has a seed; give per-sequence seeds with \`seeds\``);
    const { maxNewTokens, stopStrings, ...own } = o as GenerateOptions;
    try {
      const g = validateGenerate({
        maxNewTokens: maxNewTokens ?? maxNew,
        stopStrings: stopStrings ?? opts.stopStrings,
      });
      return {
        sampling: validateSampling({ ...shared, ...own }, V),
        maxNew: g.maxNew,
        stopStrings: stopStrings ?? opts.stopStrings,
      };
    } catch (e) {
      if (e instanceof InvalidOptionError)
        throw new InvalidOptionError(`perSequence[${i}]: ${e.message}`, { cause: e });
      throw e;
    }
  });
  // Alone, maxNewTokens 0 returns before the prompt reaches the cache; in a batch it would not.
  const none = list.findIndex((o) => o.maxNew === 0);
  if (none >= 0 && list.some((o) => o.maxNew > 0)) {
    throw new InvalidOptionError(
      `perSequence: sequence ${none} asks for 0 new tokens while others generate; leave it out of the batch`,
    );
  }
  return list;
}

/** State of one row during a generation. */
interface Row {
  out: number[]; // new tokens accepted so far
  streamer: TextStreamer;
  finished: FinishReason | null;
  text: string;
  /** Final and handed over early (onSequenceDone with a session cache): its cache row is released. */
  released: boolean;
}

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
  const ids = typeof prompt === 'string' ? model.tokenizer.encode(prompt) : Array.from(prompt);
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
  if (!Array.isArray(prompts) || prompts.length === 0)
    throw new InvalidOptionError(
      `generateBatch needs a non-empty array of prompts, got ${JSON.stringify(prompts)?.slice(0, 80)}`,
    );
  const ids = prompts.map((p) => (typeof p === 'string' ? model.tokenizer.encode(p) : Array.from(p)));
  return run(model, ids, { ...opts, numSequences: ids.length });
}

async function run(model: GPT2Model, prompts: number[][], opts: GenerateOptions): Promise<GenerateResult> {
  const tCall = now();
  const withDepth = { ...opts, pipelineDepth: opts.pipelineDepth ?? model.profile.pipelineDepth }; // the profile's default
  const { maxNew: sharedMaxNew, rows: R, depth } = validateGenerate(withDepth);
  const cfg = model.config;
  const V = cfg.vocab_size;
  const seqOpts = sequenceOptions(opts, R, V, sharedMaxNew);
  const sampling = seqOpts.map((o) => o.sampling);
  // Steps run until the longest sequence is done; each row stops at its own count.
  const maxNew = Math.max(...seqOpts.map((o) => o.maxNew));
  // Seeds per sequence: opts.seeds, or deriveSeed(seed, i).
  const given = opts.seeds === undefined ? undefined : seedsOf(opts.seeds, opts.seed, R);
  const seed = given?.[0] ?? opts.seed ?? randomSeed();
  const seeds = given ?? Array.from({ length: R }, (_, i) => deriveSeed(seed, i));
  prompts.forEach((p, i) => model.checkIds(p, R > 1 ? `prompt ${i}` : 'prompt'));
  const promptIds = prompts[0]!;
  if (opts.signal?.aborted) throw new AbortError('generation aborted before it started');
  const stopAtEos = opts.stopAtEos ?? true;
  const eos = cfg.eos_token_id;
  const ctx = model.ctx;
  const io = new GenIO(model);

  // The cache: the caller's session, or a temporary one.
  // rows[i]: the cache row of sequence i.
  let cache: KVCache;
  let rows: number[];
  const own = opts.cache === undefined;
  if (opts.cache) {
    if (opts.onOverflow !== undefined || opts.keep !== undefined) {
      throw new InvalidOptionError(
        'onOverflow and keep belong to the session: pass them to createSession()/createCache(), not to generate() with a cache',
      );
    }
    cache = opts.cache;
    cache.checkUsable(model);
    rows = cacheRowsOf(cache, opts.cacheRows, R);
    cache.acquire(model, rows);
  } else {
    if (opts.cacheRows !== undefined)
      throw new InvalidOptionError(
        'cacheRows picks rows of the cache given as `cache`; pass the cache too (or leave cacheRows out)',
      );
    rows = Array.from({ length: R }, (_, r) => r);
    const need = Math.max(...prompts.map((p, r) => p.length + seqOpts[r]!.maxNew));
    const capacity = generationCapacity(cfg, need, opts.keep !== undefined);
    cache = await model.createCache({ rows: R, capacity, onOverflow: opts.onOverflow, keep: opts.keep });
    cache.acquire(model);
  }
  const owned = new Owned(ctx);
  const plans: ForwardPlan[] = [];
  const pending: Array<Promise<void>> = [];
  let finished = false; // the plans' work ended without an error: the cache may keep them
  // A sequence asked for no tokens is done before the first step.
  const rowsState: Row[] = Array.from({ length: R }, (_, r) => ({
    out: [],
    streamer: new TextStreamer(model.tokenizer),
    finished: seqOpts[r]!.maxNew === 0 ? 'length' : null,
    text: '',
    released: false,
  }));
  try {
    const sequence = (r: Row): GeneratedSequence => ({
      tokens: r.out,
      text: r.text,
      finishReason: r.finished ?? 'length',
    });
    const result = (): GenerateResult => ({ promptIds, seed, seeds, sequences: rowsState.map(sequence), stats });
    // A final sequence: its text completed, its cache row released (free for another generation:
    // onSequenceDone may start the session's next turn at once), onSequenceDone told. With
    // onSequenceDone and a session cache, generateCached hands each sequence over as it finishes
    // (it has made the row's history final and no longer writes the row); the rest go at the end.
    const handOver = (r: number, snapshot: GenerateStats): void => {
      const row = rowsState[r]!;
      row.text += row.finished === 'stop' ? '' : row.streamer.flush();
      row.released = true;
      cache.release([rows[r]!]);
      opts.onSequenceDone?.({ row: r, sequence: sequence(row), stats: snapshot });
    };
    const early = opts.onSequenceDone && !own ? handOver : undefined;
    const handOverRest = (): void =>
      rowsState.forEach((row, r) => {
        if (!row.released) handOver(r, { ...stats });
      });
    const stats: GenerateStats = {
      setup_ms: 0,
      prefill_ms: 0,
      first_token_ms: 0,
      decode_ms_per_token: 0,
      tokens_per_s: 0,
      readback_bytes_per_token: 0,
      batch_rows: R,
      steps: 0,
      shifts: 0,
      submits: 0,
      dispatches_per_step: 0,
    };
    if (maxNew === 0) {
      handOverRest();
      return result();
    }

    const sampler = model.kernels.sampler;
    const state = sampler.createState(owned, R, sampling, {
      seeds,
      eosId: eos,
      stopAtEos,
    });
    // Penalties count the prompt and whatever the session already holds.
    for (let r = 0; r < R; r++) sampler.addCounts(state, r, [...cache.tokens[rows[r]!]!, ...prompts[r]!]);

    // Staging ring for the 4-byte-per-row read-back.
    const staging = Array.from({ length: depth }, (_, i) =>
      owned.buffer(`ids.staging${i}`, R * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST),
    );

    // Accept the ids of one step (row r's token), stream them, apply stop rules.
    const accept = (ids: Uint32Array): void => {
      for (let r = 0; r < R; r++) {
        const row = rowsState[r]!;
        if (row.finished) continue;
        const tok = ids[r]!;
        row.out.push(tok);
        const isEos = stopAtEos && tok === eos;
        const piece = isEos ? '' : row.streamer.push(tok);
        row.text += piece;
        opts.onToken?.({ row: r, token: tok, text: piece, index: row.out.length - 1 });
        if (isEos) row.finished = 'eos';
        else if (seqOpts[r]!.stopStrings?.some((s) => row.text.includes(s))) {
          row.finished = 'stop';
          const at = Math.min(
            ...seqOpts[r]!.stopStrings!.map((s) => {
              const i = row.text.indexOf(s);
              return i < 0 ? Infinity : i + s.length;
            }),
          );
          row.text = row.text.slice(0, at);
        } else if (row.out.length >= seqOpts[r]!.maxNew) row.finished = 'length';
      }
    };
    const allDone = (): boolean => rowsState.every((r) => r.finished);

    if (opts.useCache === false) {
      await generateUncached(
        model,
        cache,
        rows,
        prompts,
        owned,
        state,
        staging[0]!,
        accept,
        allDone,
        opts,
        stats,
        tCall,
        io,
        maxNew,
      );
    } else {
      await generateCached(
        model,
        cache,
        rows,
        prompts,
        owned,
        state,
        staging,
        accept,
        allDone,
        rowsState,
        opts,
        stats,
        plans,
        pending,
        depth,
        tCall,
        io,
        maxNew,
        early,
        early && opts.admit ? { admit: opts.admit, seqOpts } : undefined,
      );
    }
    if (opts.useCache === false) {
      // (generateCached sets its own per-step figures)
      const produced = Math.max(1, stats.steps);
      stats.submits = io.submits / produced;
      stats.dispatches_per_step = io.dispatches / produced;
      stats.readback_bytes_per_token = io.bytesReadBack / produced / R;
    }
    finished = true;
    handOverRest();
    return result();
  } finally {
    await Promise.allSettled(pending);
    // A session's next turn takes these plans instead of building them again (keepPlan).
    for (const p of plans)
      if (finished && !own) model.keepPlan(p);
      else p.destroy();
    owned.destroy();
    cache.release(rows.filter((_, r) => !rowsState[r]!.released)); // a released row may be another generation's now
    if (own) cache.destroy();
  }
}

/**
 * Appends the tokens of cache row cr that the cache does not hold yet (tokens[lengths..]) to a
 * step's ids and meta; the row's length counts them (the step writes their K/V).
 */
function feedPending(cache: KVCache, cr: number, ids: number[], meta: number[]): void {
  const seq = cache.tokens[cr]!;
  for (let p = cache.lengths[cr]!; p < seq.length; p++) {
    ids.push(seq[p]!);
    meta.push(cr, p);
  }
  cache.lengths[cr] = seq.length;
}

/** Token list for re-encoding row r after a shift: its most recent `keep` tokens. */
function shiftRow(cache: KVCache, r: number): number[] {
  return cache.tokens[r]!.slice(-cache.keep);
}

async function generateCached(
  model: GPT2Model,
  cache: KVCache,
  rows: number[],
  prompts: number[][],
  owned: Owned,
  state: unknown,
  staging: GPUBuffer[],
  accept: (ids: Uint32Array) => void,
  allDone: () => boolean,
  rowsState: Row[],
  opts: GenerateOptions,
  stats: GenerateStats,
  plans: ForwardPlan[],
  pending: Array<Promise<void>>,
  depth: number,
  tCall: number,
  io: GenIO,
  maxStepsAtStart: number,
  handOver?: (r: number, snapshot: GenerateStats) => void,
  joins?: { admit: (slots: number[]) => Admission[]; seqOpts: SequenceOptions[] },
): Promise<void> {
  const ctx = model.ctx;
  const R = rows.length; // sequence r lives in cache row rows[r] (a joining sequence changes rows[r])
  const sampler = model.kernels.sampler;
  const window = cache.window;
  let maxSteps = maxStepsAtStart; // steps that can be needed (sequences that join raise it)

  // Decode plan: one token per row; the sampler writes the next ids into decode.ids, the loop
  // writes each step's meta before submitting it.
  const decode = model.takePlan(cache, R, R, { decode: true });
  plans.push(decode);
  const decodeSample: Dispatch[] = sampler.bind(owned, state as never, { logits: decode.logits, outIds: decode.ids });

  // ---- Prefill. Rows that already hold tokens (a continued session) get the prompt appended.
  // A fresh multi-row cache is prefilled once (row 0 of a 1-row cache) and copied to every row.
  const samePrompt = prompts.every((p) => p.length === prompts[0]!.length && p.every((t, i) => t === prompts[0]![i]));
  const fresh = samePrompt && rows.every((cr) => cache.lengths[cr] === 0 && cache.tokens[cr]!.length === 0);
  for (let r = 0; r < R; r++) {
    const cr = rows[r]!;
    const promptIds = prompts[r]!;
    const P = promptIds.length;
    if (cache.tokens[cr]!.length + P > window) {
      if (cache.onOverflow === 'error') {
        throw new ContextOverflowError(
          `prompt of ${P} tokens plus ${cache.tokens[cr]!.length} context tokens passes the context window of ${window} tokens; shorten the prompt or use onOverflow: 'shift'`,
        );
      }
      // Shift: keep the most recent tokens of history + prompt.
      const all = [...cache.tokens[cr]!, ...promptIds];
      cache.reset(cr);
      cache.tokens[cr] = all.slice(-Math.min(cache.keep, window - 1));
      stats.shifts++;
    } else {
      cache.tokens[cr] = [...cache.tokens[cr]!, ...promptIds];
    }
  }
  let tSubmit = 0; // when the prompt's submit began (setup ends there)
  let prefill: ForwardPlan;
  let copyRows: ((enc: GPUCommandEncoder) => void) | undefined;
  if (fresh && R > 1) {
    // Prefill row 0 of a scratch 1-row cache, then copy its K/V into every row on the GPU.
    const seq = cache.tokens[rows[0]!]!;
    const scratch = await model.createCache({ rows: 1, capacity: cache.capacity });
    try {
      prefill = new ForwardPlan(model, scratch, seq.length, R);
    } catch (e) {
      scratch.destroy();
      throw e;
    }
    plans.push(prefill);
    prefill.write({ ids: seq, meta: rowMeta(0, 0, seq.length), lastIdx: new Uint32Array(R).fill(seq.length - 1) });
    const rowBytes = cache.capacity * model.config.n_embd * 4;
    const used = seq.length * model.config.n_embd * 4;
    copyRows = (enc) => {
      for (let l = 0; l < model.config.n_layer; l++) {
        for (const cr of rows) {
          enc.copyBufferToBuffer(scratch.k[l]!, 0, cache.k[l]!, cr * rowBytes, used);
          enc.copyBufferToBuffer(scratch.v[l]!, 0, cache.v[l]!, cr * rowBytes, used);
        }
      }
    };
    for (const cr of rows) {
      cache.tokens[cr] = [...seq];
      cache.lengths[cr] = seq.length;
    }
    const prefillSample = sampler.bind(owned, state as never, { logits: prefill.logits, outIds: decode.ids });
    tSubmit = now();
    io.submit([...prefill.dispatches, ...prefillSample], (enc) => {
      copyRows!(enc);
      enc.copyBufferToBuffer(decode.ids.buffer, 0, staging[0]!, 0, R * 4);
    });
    // The scratch cache's buffers are released after the copy completed.
    const done = ctx.drain().then(() => scratch.destroy());
    pending.push(done);
  } else {
    // Every row prefills its new tokens (all of them after a shift) in one plan.
    const metaList: number[] = [];
    const idList: number[] = [];
    const last = new Uint32Array(R);
    for (let r = 0; r < R; r++) {
      feedPending(cache, rows[r]!, idList, metaList);
      last[r] = idList.length - 1;
    }
    prefill = model.takePlan(cache, idList.length, R, { bucket: opts.cache !== undefined }); // kept for the session's next turns
    plans.push(prefill);
    prefill.write({ ids: idList, meta: Uint32Array.from(metaList), lastIdx: last });
    const prefillSample = sampler.bind(owned, state as never, { logits: prefill.logits, outIds: decode.ids });
    tSubmit = now();
    io.submit([...prefill.dispatches, ...prefillSample], (enc) =>
      enc.copyBufferToBuffer(decode.ids.buffer, 0, staging[0]!, 0, R * 4),
    );
  }
  stats.setup_ms = tSubmit - tCall;
  stats.steps = 1;
  const decodeStats0 = { submits: io.submits, dispatches: io.dispatches };

  // ---- Decode loop with `depth` steps in flight.
  // queued[r]: position the next queued step feeds for sequence r (= tokens fed so far).
  const queuedPos = rows.map((cr) => cache.lengths[cr]!);
  const inflight: Array<Promise<Uint32Array>> = [];
  const readback = (buf: GPUBuffer): Promise<Uint32Array> => {
    const p = io.read(buf, R * 4).then((ab) => new Uint32Array(ab));
    p.catch(() => undefined);
    return p;
  };
  inflight.push(readback(staging[0]!));
  let submitted = 1;
  // Submits one step after the prompt's (a plan's dispatches and their sampling into decode.ids)
  // and queues the read-back of its ids into the next staging slot.
  const submitStep = (dispatches: Dispatch[]): void => {
    const slot = staging[submitted % depth]!;
    io.submit(dispatches, (enc) => enc.copyBufferToBuffer(decode.ids.buffer, 0, slot, 0, R * 4));
    inflight.push(readback(slot));
    submitted++;
  };
  let firstAt = 0;
  let decodeStart = 0;
  let stepsAccepted = 0;
  const fedCount = new Array<number>(R).fill(0); // accepted tokens already recorded in cache.tokens

  // Decode-step figures as of now (per decode step: the prefill and one-off set-up submits are not counted).
  const statsNow = (): GenerateStats => {
    const st = { ...stats, steps: stepsAccepted };
    if (submitted > 1) {
      st.submits = (io.submits - decodeStats0.submits) / (submitted - 1);
      st.dispatches_per_step = (io.dispatches - decodeStats0.dispatches) / (submitted - 1);
    }
    const decodeSteps = stepsAccepted - 1;
    const ms = now() - decodeStart;
    st.decode_ms_per_token = decodeSteps > 0 ? ms / decodeSteps : 0;
    st.tokens_per_s = decodeSteps > 0 ? (decodeSteps * R) / (ms / 1000) : 0;
    st.readback_bytes_per_token = io.bytesReadBack / Math.max(1, stepsAccepted) / R;
    return st;
  };

  // Sequences handed over as they finish (handOver): rows[r] is parked in every later step (its
  // token gets the PARKED_ROW meta: no K/V write, a NaN row that touches no other; the sampler's
  // latch makes it draw without reading its logits), its history is made final, then released.
  // Steps already in flight still write its next slots; any later generation's work on the row
  // is queued after them and overwrites those slots.
  const parked = new Array<boolean>(R).fill(false);
  // Slots a joining sequence took: when it joined and when its first token came (its own latency).
  const joinedAt = new Array<number>(R).fill(0);
  const firstOf = new Array<number>(R).fill(0);
  const handOverFinished = (): void => {
    for (let r = 0; r < R; r++) {
      const row = rowsState[r]!;
      if (!row.finished || parked[r]) continue;
      parked[r] = true;
      sampler.park(state as never, r);
      const fed = [fedCount[r]!];
      syncHistory(cache, [rows[r]!], [row], fed, true);
      fedCount[r] = fed[0]!;
      const snapshot = statsNow();
      if (joinedAt[r]) {
        // A joining sequence's own figures: from joining to its first token, then per token.
        const end = now();
        snapshot.setup_ms = 0;
        snapshot.first_token_ms = snapshot.prefill_ms = firstOf[r]! - joinedAt[r]!;
        snapshot.steps = row.out.length;
        snapshot.decode_ms_per_token = row.out.length > 1 ? (end - firstOf[r]!) / (row.out.length - 1) : 0;
        snapshot.tokens_per_s = row.out.length > 1 ? (1000 * (row.out.length - 1)) / (end - firstOf[r]!) : 0;
      }
      handOver!(r, snapshot);
    }
  };

  // Continuous batching (joins): between steps, sequences waiting to join take parked slots. The
  // steps in flight are drained (every pending token known on the CPU), each joiner's slot gets a
  // fresh sampler row (options, seed, counts of its context and prompt) and its cache row, and one
  // mixed step feeds every active slot its pending token and every joiner its new tokens (a
  // general plan; parked slots feed nothing and their logits go unread), sampling every slot.
  // A mixed step's plan and sampler bind groups (their uniforms): kept / freed once the step is read back.
  const mixed: Array<{ step: number; plan: ForwardPlan; owner: Owned }> = [];
  const tryAdmit = async (): Promise<boolean> => {
    if (!joins || !parked.some(Boolean)) return false;
    const free = parked.flatMap((p, r) => (p ? [r] : []));
    const wanted = joins.admit(free);
    if (wanted.length === 0) return false;
    const slots = new Set(wanted.map((a) => a.slot));
    if (slots.size !== wanted.length || wanted.some((a) => !parked[a.slot]))
      throw new ShapeError(
        `admit returned slots ${wanted.map((a) => a.slot).join(',')}; each must be one of the parked slots ${free.join(',')}, once`,
      );
    while (inflight.length) await takeOne();
    const t = now();
    for (const a of wanted) {
      const r = a.slot;
      if (cache.tokens[a.row]!.length + a.ids.length >= window)
        throw new ShapeError(
          `admit: row ${a.row} holds ${cache.tokens[a.row]!.length} tokens; ${a.ids.length} more do not fit the window of ${window}`,
        );
      cache.acquire(model, [a.row]);
      rows[r] = a.row;
      parked[r] = false;
      rowsState[r] = {
        out: [],
        streamer: new TextStreamer(model.tokenizer),
        finished: null,
        text: '',
        released: false,
      };
      joins.seqOpts[r] = { sampling: a.sampling, maxNew: a.maxNew, stopStrings: a.stopStrings };
      fedCount[r] = 0;
      sampler.resetRow(state as never, r);
      sampler.setRow(state as never, r, a.sampling, a.seed);
      sampler.addCounts(state as never, r, [...cache.tokens[a.row]!, ...a.ids]);
      cache.tokens[a.row] = [...cache.tokens[a.row]!, ...a.ids];
      joinedAt[r] = t;
      firstOf[r] = 0;
    }
    const ids: number[] = [];
    const meta: number[] = [];
    const last = new Uint32Array(R); // parked slots read token 0's logits, unused (latched)
    for (let r = 0; r < R; r++) {
      if (parked[r]) continue;
      const cr = rows[r]!;
      if (slots.has(r)) {
        feedPending(cache, cr, ids, meta);
        queuedPos[r] = cache.lengths[cr]!;
      } else {
        ids.push(rowsState[r]!.out.at(-1)!); // its pending token, as the decode step would feed it
        meta.push(cr, queuedPos[r]!);
        queuedPos[r]!++;
      }
      last[r] = ids.length - 1;
    }
    for (const a of wanted) maxSteps = Math.max(maxSteps, submitted + a.maxNew);
    const plan = model.takePlan(cache, ids.length, R, { bucket: true });
    const owner = new Owned(ctx);
    mixed.push({ step: submitted + 1, plan, owner });
    plan.write({ ids, meta: Uint32Array.from(meta), lastIdx: last });
    submitStep([
      ...plan.dispatches,
      ...sampler.bind(owner, state as never, { logits: plan.logits, outIds: decode.ids }),
    ]);
    return true;
  };

  const takeOne = async (): Promise<void> => {
    const ids = await inflight.shift()!;
    stepsAccepted++;
    if (stepsAccepted === 1) {
      firstAt = now();
      stats.first_token_ms = firstAt - tCall;
      stats.prefill_ms = firstAt - tSubmit;
      decodeStart = firstAt;
    }
    accept(ids);
    while (mixed.length && mixed[0]!.step <= stepsAccepted) {
      const m = mixed.shift()!;
      m.owner.destroy();
      model.keepPlan(m.plan);
    }
    for (let r = 0; r < R; r++) if (joinedAt[r] && !firstOf[r] && rowsState[r]!.out.length > 0) firstOf[r] = now();
    // Without joins the last ones go at the end, with the final figures; with joins every slot is
    // parked as it finishes, so that a waiting sequence may take it.
    if (handOver && (joins || !allDone())) handOverFinished();
  };

  try {
    while (true) {
      if (opts.signal?.aborted) throw new AbortError(`generation aborted after ${stepsAccepted} steps`);
      // Enough queued to finish every row?
      const active = rowsState.some((r) => !r.finished);
      if (!active) {
        if (await tryAdmit()) continue;
        break;
      }
      if (submitted >= maxSteps) {
        if (inflight.length === 0) break;
        await takeOne();
        continue;
      }
      if (inflight.length >= depth) {
        await takeOne();
        continue;
      }
      // Row positions for the next step; rows known finished are held at their last slot.
      const needShift: number[] = [];
      for (let r = 0; r < R; r++) {
        if (rowsState[r]!.finished) continue;
        if (queuedPos[r]! >= window) needShift.push(r);
      }
      if (needShift.length) {
        // Drain: every fed token must be known on the CPU to re-encode.
        while (inflight.length) await takeOne();
        if (allDone()) break;
        syncHistory(cache, rows, rowsState, fedCount, false);
        for (const r of needShift) {
          if (rowsState[r]!.finished) continue;
          const cr = rows[r]!;
          if (cache.onOverflow === 'error') {
            throw new ContextOverflowError(
              `row ${cr} reached the context window of ${window} tokens; use onOverflow: 'shift' to keep going`,
            );
          }
          const kept = shiftRow(cache, cr);
          await reencode(model, cache, cr, kept, plans, io);
          cache.tokens[cr] = kept;
          cache.lengths[cr] = kept.length;
          queuedPos[r] = kept.length;
          stats.shifts++;
        }
        continue;
      }
      if (await tryAdmit()) continue;
      decode.write({
        meta: decodeMeta(
          queuedPos.map((p) => Math.min(p, window - 1)),
          rows.map((cr, r) => (parked[r] ? PARKED_ROW : cr)),
        ),
      });
      submitStep([...decode.dispatches, ...decodeSample]);
      for (let r = 0; r < R; r++) if (!rowsState[r]!.finished && queuedPos[r]! < window) queuedPos[r]!++;
    }
  } finally {
    // Mixed steps not read back (an error, or steps past the end): their plans go with the run.
    for (const m of mixed.splice(0)) {
      m.owner.destroy();
      m.plan.destroy();
    }
  }
  // Rows that finished early stopped being recorded; what the GPU computed past that is ignored.
  syncHistory(cache, rows, rowsState, fedCount, true);
  Object.assign(stats, statsNow());
  model.ctx.throwIfErrors();
}

/**
 * Brings cache.tokens/lengths up to date with what was fed to the model. A token chosen at step s
 * is fed at step s+1, so every accepted token but each row's newest is in the cache. With
 * `final`, the newest ones are appended to `tokens` too (the context), though not to `lengths`
 * (the K/V held): a continued session feeds them first.
 */
function syncHistory(cache: KVCache, rows: number[], state: Row[], fedCount: number[], final: boolean): void {
  for (let r = 0; r < rows.length; r++) {
    const cr = rows[r]!;
    const out = state[r]!.out;
    const upto = final ? out.length : Math.max(0, out.length - 1);
    for (let i = fedCount[r]!; i < upto; i++) {
      cache.tokens[cr]!.push(out[i]!);
      if (i < out.length - 1 || !final) cache.lengths[cr]!++;
    }
    fedCount[r] = Math.max(fedCount[r]!, upto);
  }
}

/** Re-encodes `kept` tokens of row r from position 0 (a context shift). No logits are needed. */
async function reencode(
  model: GPT2Model,
  cache: KVCache,
  r: number,
  kept: number[],
  plans: ForwardPlan[],
  io: GenIO,
): Promise<void> {
  // Shifts keep the same number of tokens, so one plan per length serves every shift of a run
  // (GPU memory stays flat however many shifts happen).
  let plan = plans.find((p) => p.cache === cache && p.T === kept.length && p.R === 1 && p.tag === 'reencode');
  if (!plan) {
    plan = model.takePlan(cache, kept.length, 1); // exact: every shift of a cache keeps the same count
    plan.tag = 'reencode';
    plans.push(plan);
  }
  plan.write({ ids: kept, meta: rowMeta(r, 0, kept.length), lastIdx: Uint32Array.of(kept.length - 1) });
  io.submit(plan.dispatches);
}

async function generateUncached(
  model: GPT2Model,
  cache: KVCache,
  rows: number[],
  prompts: number[][],
  owned: Owned,
  state: unknown,
  staging: GPUBuffer,
  accept: (ids: Uint32Array) => void,
  allDone: () => boolean,
  opts: GenerateOptions,
  stats: GenerateStats,
  tCall: number,
  io: GenIO,
  maxNew: number,
): Promise<void> {
  const ctx = model.ctx;
  const R = rows.length; // sequence r lives in cache row rows[r]
  const window = cache.window;
  // What each row's context holds (the cached path's cache contents + the token to feed next).
  const seqs: number[][] = [];
  for (let r = 0; r < R; r++) {
    let s = [...cache.tokens[rows[r]!]!, ...prompts[r]!];
    if (s.length > window) {
      if (cache.onOverflow === 'error')
        throw new ContextOverflowError(
          `prompt of ${prompts[r]!.length} tokens plus context passes the context window of ${window} tokens`,
        );
      s = s.slice(-Math.min(cache.keep, window - 1));
      stats.shifts++;
    }
    seqs.push(s);
  }
  const outIds = {
    buffer: owned.buffer(
      'uncached.ids',
      R * 4,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    ),
    offset: 0,
    shape: [R],
    dtype: 'u32' as const,
  };
  let decodeStart = 0;
  for (let step = 0; step < maxNew && !allDone(); step++) {
    if (opts.signal?.aborted) throw new AbortError(`generation aborted after ${step} steps`);
    for (const cr of rows) cache.reset(cr);
    const ids: number[] = [];
    const meta: number[] = [];
    const last = new Uint32Array(R);
    for (let r = 0; r < R; r++) {
      seqs[r]!.forEach((t, p) => {
        ids.push(t);
        meta.push(rows[r]!, p);
      });
      last[r] = ids.length - 1;
    }
    const plan = new ForwardPlan(model, cache, ids.length, R);
    try {
      plan.write({ ids, meta: Uint32Array.from(meta), lastIdx: last });
      const sample = model.kernels.sampler.bind(owned, state as never, { logits: plan.logits, outIds });
      const tSubmit = now();
      io.submit([...plan.dispatches, ...sample], (enc) => enc.copyBufferToBuffer(outIds.buffer, 0, staging, 0, R * 4));
      const got = new Uint32Array(await io.read(staging, R * 4));
      if (step === 0) {
        decodeStart = now();
        stats.first_token_ms = decodeStart - tCall;
        stats.prefill_ms = decodeStart - tSubmit;
        stats.setup_ms = tSubmit - tCall;
      }
      accept(got);
      for (let r = 0; r < R; r++) {
        seqs[r]!.push(got[r]!);
        // Mirror the cached path: when the context would pass the window, keep the most recent
        // `keep` tokens before the new one.
        if (seqs[r]!.length > window) {
          const tok = seqs[r]!.pop()!;
          seqs[r] = [...seqs[r]!.slice(-cache.keep), tok];
          stats.shifts++;
        }
      }
      stats.steps = step + 1;
    } finally {
      plan.destroy();
    }
  }
  const end = now();
  const decodeSteps = stats.steps - 1;
  stats.decode_ms_per_token = decodeSteps > 0 ? (end - decodeStart) / decodeSteps : 0;
  stats.tokens_per_s = decodeSteps > 0 ? (decodeSteps * R) / ((end - decodeStart) / 1000) : 0;
  // The cache holds no valid K/V now (every step reset it); keep the context so a continued
  // session re-encodes it.
  for (let r = 0; r < R; r++) {
    cache.reset(rows[r]!);
    cache.tokens[rows[r]!] = seqs[r]!;
  }
  ctx.throwIfErrors();
}
