/**
 * Generation options: the public types of a generation (options, events, sequences, statistics,
 * result), their defaults and validation, and each sequence's own options. Everything here runs
 * before any GPU work, so a bad option fails with InvalidOptionError and nothing to free.
 */
import { InvalidOptionError } from '../errors.js';
import { checkOptionNames, checkOptions } from '../sampling/names.js';
import {
  SAMPLING_OPTIONS,
  tokenIds,
  validateSampling,
  type NormalizedSampling,
  type SamplingOptions,
} from '../sampling/options.js';
import type { KVCache } from './kvcache.js';

export const MAX_NEW_TOKENS_LIMIT = 1_000_000;
/** The most alternatives GenerateOptions.logprobs asks for (the logprobs kernel's MAX_TOP_LOGPROBS). */
export const MAX_LOGPROBS = 20;
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
  perSequence?: Array<
    Omit<SamplingOptions, 'seed'> & Pick<GenerateOptions, 'maxNewTokens' | 'stopStrings' | 'stopTokenIds'>
  >;
  /** Stop a sequence when it emits EOS (eosTokenId). Default true. */
  stopAtEos?: boolean;
  /**
   * transformers' eos_token_id: the id, or ids, that end a sequence (finishReason 'eos'; the token
   * is the last of `tokens`, its text is left out). Default the model's (50256 for GPT-2).
   */
  eosTokenId?: number | number[];
  /**
   * Ids that end a sequence besides EOS, whatever stopAtEos says (vLLM's stop_token_ids):
   * finishReason 'stop', the token is the last of `tokens`; its text is kept unless
   * includeStopString is false. minNewTokens holds them back like EOS.
   */
  stopTokenIds?: number[];
  /** Stop a sequence once its text contains one of these; later tokens are dropped. */
  stopStrings?: string[];
  /**
   * Whether a sequence's `text` keeps the stop string (or stop token) that ended it. Default true
   * (the text ends with the stop string); false cuts it before the stop string, as OpenAI does.
   * `tokens` always holds every token drawn, and text streamed through onToken is not held back.
   */
  includeStopString?: boolean;
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
  /**
   * Log-probabilities of every generated token, computed on the GPU in the step that draws it
   * (GeneratedSequence.logprobs, TokenEvent.logprob): 0 for the token's own, N in 1..20 for the N
   * most likely alternatives too. Absent: off (nothing more computed or read back).
   */
  logprobs?: number;
  /**
   * Called for every new token as soon as it is read back. What it throws ends the call with that
   * error; an async listener's rejection too (at its next token, or by the call's end: the call
   * waits for the promises its listeners return).
   */
  onToken?: (ev: TokenEvent) => void;
  /**
   * Called once per sequence as soon as it is final (EOS, its maxNewTokens, a stop string), with
   * its tokens and text and the run's statistics so far. With a session's `cache` (cached mode)
   * its cache row is released at that moment: the row's history is final, the row is free for
   * another generation while the others go on, and the rest of this run no longer writes it.
   * Otherwise (a temporary cache, useCache false) it is called for every sequence at the end.
   * Errors and async rejections as for onToken.
   */
  onSequenceDone?: (ev: SequenceDoneEvent) => void;
  /**
   * @internal Session groups' continuous batching: with onSequenceDone and a session cache, the
   * sequences waiting to join this run; at a step boundary where some slots are parked (their
   * sequence handed over), the run seats waiting ones in them. See JoinQueue.
   */
  joiners?: JoinQueue;
  /**
   * Steps queued ahead of the read-back (1 = no pipelining). Default: 3 on GPUs; 1 on CPU adapters
   * (lavapipe), where the host's work for the steps queued ahead competes with the driver's
   * worker threads for the same cores (BENCHMARKS.md).
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
  /** With GenerateOptions.logprobs: the token's log-probabilities. */
  logprob?: TokenLogprob;
}

/**
 * One generated token's log-probabilities (GenerateOptions.logprobs), natural logs. `logprob` and
 * `top` are the model's own distribution, the log-softmax of the raw logits (what OpenAI's API and
 * model.score report); `processedLogprob` is the distribution the token was drawn from.
 */
export interface TokenLogprob {
  /** ln p(token | context) under the raw logits' softmax. */
  logprob: number;
  /**
   * ln p(token) under the distribution it was drawn from: the softmax of the processed logits
   * (logit bias, repetition penalty, bans, temperature, frequency and presence penalties) over the
   * tokens top-k, top-p and min-p kept (transformers' output_scores, log-softmaxed). Greedy
   * (temperature 0): the log-softmax of the processed logits over every token (not divided,
   * nothing cut); the token is its argmax.
   */
  processedLogprob: number;
  /** Whether the token is the argmax of the raw logits (ties: the smaller id). */
  greedy: boolean;
  /** With logprobs N >= 1: the N most likely tokens under the raw logits, best first (ties: smaller id first). */
  top?: Array<{ id: number; logprob: number }>;
}

/**
 * A sequence waiting to join a run in flight (GenerateOptions.joiners): it will take a parked slot
 * (its events carry that slot's index), in cache row `row` (free, its context plus `ids` within
 * the window), with its own options, seed and listeners.
 */
export interface Joiner extends SequenceOptions {
  row: number;
  ids: number[];
  seed: number;
  onToken?: (ev: TokenEvent) => void;
  onSequenceDone?: (ev: SequenceDoneEvent) => void;
}

/**
 * Sequences waiting to join one run (continuous batching): whoever started the run pushes them as
 * they arrive; the run seats them, oldest first, in its parked slots at a step boundary (seat).
 */
export class JoinQueue<T extends Joiner = Joiner> {
  private readonly queue: T[] = [];
  /** Slot -> the joiner seated there last. */
  private readonly bySlot = new Map<number, T>();
  /** Joiners seated so far. */
  seated = 0;

  /** Joiners waiting. */
  get length(): number {
    return this.queue.length;
  }

  /** The joiners waiting, oldest first. */
  get waiting(): readonly T[] {
    return this.queue;
  }

  push(joiner: T): void {
    this.queue.push(joiner);
  }

  /** The joiner seated in `slot` last (undefined: none was). */
  seatedIn(slot: number): T | undefined {
    return this.bySlot.get(slot);
  }

  /** Removes the first waiting joiner that `which` picks; whether there was one. */
  remove(which: (j: T) => boolean): boolean {
    const i = this.queue.findIndex(which);
    if (i >= 0) this.queue.splice(i, 1);
    return i >= 0;
  }

  /** Removes and returns the joiners still waiting (their run ended first). */
  takeWaiting(): T[] {
    return this.queue.splice(0);
  }

  /** The run: seats up to free.length waiting joiners, oldest first, in the slots `free` in order. */
  seat(free: readonly number[]): Array<{ slot: number; joiner: T }> {
    const seats = this.queue.splice(0, free.length).map((joiner, i) => ({ slot: free[i]!, joiner }));
    for (const { slot, joiner } of seats) this.bySlot.set(slot, joiner);
    this.seated += seats.length;
    return seats;
  }
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
  /** With GenerateOptions.logprobs: one entry per token of `tokens`. */
  logprobs?: TokenLogprob[];
}

export interface GenerateStats {
  /**
   * Host work before the prompt reached the GPU: the temporary cache, sampler state, the prefill
   * and decode plans (buffers, bind groups). firstTokenMs = setupMs + prefillMs.
   */
  setupMs: number;
  /** From the prompt's submit to its first sampled ids on the CPU: the GPU's prefill, sampling and the read-back. */
  prefillMs: number;
  /** From the call to the first sampled ids on the CPU (setup included): what a caller waits. */
  firstTokenMs: number;
  decodeMsPerToken: number;
  tokensPerSecond: number;
  readbackBytesPerToken: number;
  steps: number;
  /**
   * Sequences advanced in the same steps: numSequences, or the number of session-group turns
   * merged into this run (tokensPerSecond counts all of them).
   */
  batchRows: number;
  shifts: number;
  /** Submits per decode step. */
  submitsPerStep: number;
  /** Dispatches per decode step. */
  dispatchesPerStep: number;
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
  'eosTokenId',
  'stopTokenIds',
  'stopStrings',
  'includeStopString',
  'useCache',
  'cache',
  'cacheRows',
  'signal',
  'logprobs',
  'onToken',
  'onSequenceDone',
  'joiners',
  'pipelineDepth',
  'onOverflow',
  'keep',
]);

/** Every option generate() takes (generation and sampling ones; `joiners` is internal). */
export const GENERATE_OPTIONS: readonly string[] = [
  ...[...GENERATE_KEYS].filter((k) => k !== 'joiners'),
  ...SAMPLING_OPTIONS,
];

/** What a perSequence entry may override. */
const PER_SEQUENCE_OPTIONS: readonly string[] = [
  ...SAMPLING_OPTIONS.filter((k) => k !== 'seed'),
  'maxNewTokens',
  'stopStrings',
  'stopTokenIds',
];

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
  o = checkOptions(o, GENERATE_OPTIONS, 'generation option', ['joiners']);
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
  for (const k of ['stopAtEos', 'includeStopString'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'boolean')
      throw new InvalidOptionError(`${k} must be a boolean, got ${String(o[k])}`);
  }
  const signal = o.signal as Partial<AbortSignal> | undefined;
  if (signal !== undefined && (typeof signal?.aborted !== 'boolean' || typeof signal.addEventListener !== 'function'))
    throw new InvalidOptionError(`signal must be an AbortSignal (new AbortController().signal), got ${String(signal)}`);
  for (const k of ['onToken', 'onSequenceDone'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'function')
      throw new InvalidOptionError(`${k} must be a function, got ${typeof o[k]}`);
  }
  if (
    o.logprobs !== undefined &&
    (typeof o.logprobs !== 'number' || !Number.isInteger(o.logprobs) || o.logprobs < 0 || o.logprobs > MAX_LOGPROBS)
  )
    throw new InvalidOptionError(
      `logprobs must be an integer in [0, ${MAX_LOGPROBS}] (alternatives per token; leave it out for none), got ${String(o.logprobs)}`,
    );
  if (o.joiners !== undefined && !(o.joiners instanceof JoinQueue))
    throw new InvalidOptionError(`joiners must be a JoinQueue, got ${typeof o.joiners}`);
  return { maxNew, rows, depth };
}

/**
 * The cache rows a generation advances (GenerateOptions.cacheRows), validated: R distinct rows of
 * the cache; without cacheRows every row in order, which needs R == cache.rows.
 */
export function cacheRowsOf(cache: KVCache, rows: unknown, R: number): number[] {
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

/** GenerateOptions.seeds, validated: R integers in [0, 2^53), and no `seed` beside them. */
export function seedsOf(seeds: unknown, seed: unknown, R: number): number[] {
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

/** One sequence's options: sampling (normalised), new tokens, stop strings and stop token ids. */
export interface SequenceOptions {
  sampling: NormalizedSampling;
  maxNew: number;
  stopStrings: string[] | undefined;
  stopTokenIds: number[];
  /** The run's GenerateOptions.logprobs (the same for every sequence of a run); absent: off. */
  logprobs?: number;
}

/** GenerateOptions.eosTokenId, validated: the ids that are EOS (default the model's). */
export function eosIdsOf(o: GenerateOptions, dflt: number, vocab: number): number[] {
  const e = o.eosTokenId;
  if (e === undefined) return [dflt];
  return tokenIds('eosTokenId', typeof e === 'number' ? [e] : e, vocab, true);
}

/**
 * Every sequence's options: the shared ones, or (GenerateOptions.perSequence) the shared ones
 * overridden per sequence, validated with the sequence named.
 */
export function sequenceOptions(opts: GenerateOptions, R: number, V: number, maxNew: number): SequenceOptions[] {
  const shared = samplingPart(opts);
  const sampling = validateSampling(shared, V); // the shared options' own errors first
  const stopIds = (ids: unknown) => (ids === undefined ? [] : tokenIds('stopTokenIds', ids, V));
  const stopTokenIds = stopIds(opts.stopTokenIds);
  const lp = opts.logprobs === undefined ? {} : { logprobs: opts.logprobs };
  const per = opts.perSequence;
  if (per === undefined)
    return Array.from({ length: R }, () => ({ sampling, maxNew, stopStrings: opts.stopStrings, stopTokenIds, ...lp }));
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
    const { maxNewTokens, stopStrings, stopTokenIds: ownStopIds, ...own } = o as GenerateOptions;
    try {
      checkOptionNames(o, PER_SEQUENCE_OPTIONS, 'option');
      const g = validateGenerate({
        maxNewTokens: maxNewTokens ?? maxNew,
        stopStrings: stopStrings ?? opts.stopStrings,
      });
      return {
        sampling: validateSampling({ ...shared, ...own }, V),
        maxNew: g.maxNew,
        stopStrings: stopStrings ?? opts.stopStrings,
        stopTokenIds: ownStopIds === undefined ? stopTokenIds : stopIds(ownStopIds),
        ...lp,
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
