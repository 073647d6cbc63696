/**
 * The public entry point: an Engine owns a GPU context; it loads Models; a Model generates text,
 * runs beam search, samples from given logits and hands out Sessions (KV caches).
 *
 *   const engine = await Engine.create({ gpu: navigator.gpu });   // Node: createEngine() from the package
 *   const model = await engine.loadModel('random:gpt2');
 *   const res = await model.generate('Hello', { maxNewTokens: 20, temperature: 0 });
 *   model.destroy(); engine.destroy();
 */
import { resolveProfile, type DeviceProfile } from '../kernels/profile.js';
import { contextFromDevice, createContext, GpuContext } from '../gpu/device.js';
import { rowsThatFit } from '../gpu/limits.js';
import { GPT2Model } from './model.js';
import { eosIdsOf, sequenceOptions } from './generate-options.js';
import {
  DEFAULT_MAX_NEW_TOKENS,
  generate,
  generateBatch,
  generationPart,
  samplingPart,
  validateGenerate,
  type GenerateOptions,
  type GenerateResult,
  JoinQueue,
  type Joiner,
  type SequenceDoneEvent,
  type TokenEvent,
  type TokenLogprob,
} from './generate.js';
import { beamSearch } from './beam-search.js';
import { SlotFailure } from './slot-failure.js';
import { checkSomeIdAllowed } from '../sampling/bans.js';
import { ListenerGuard } from './listeners.js';
import { streamGeneration, type GenerationStream } from './stream.js';
import { perplexity, score, type PerplexityResult, type ScoreOptions, type ScoreResult } from './score.js';
import type { BeamOptions, BeamResult } from '../sampling/beam.js';
import { sample as sampleOnGpu } from '../sampling/sample.js';
import { randomSeed, validateSampling, type SamplingOptions } from '../sampling/options.js';
import { checkOptions } from '../sampling/names.js';
import {
  checkDownload,
  checkLoadOptions,
  checkSourceShape,
  ENGINE_OPTIONS,
  type EngineOptions,
  type ModelLoadOptions,
  type ModelSource,
  type SourceResolver,
} from './engine-options.js';
import { GENERATE_OPTIONS } from './generate-options.js';
import { CACHE_OPTIONS, checkKvDtype, type CacheOptions, type KVCache } from './kvcache.js';
import { checkedCheckpoint, openCheckpoint, type Checkpoint } from './checkpoint.js';
import { uploadWeights, WEIGHT_DTYPES } from './weights.js';
import { randomCheckpoint } from './random.js';
import { bytesSource } from './safetensors.js';
import { urlSource, fileSource } from './sources-web.js';
import { AbortError, CacheMisuseError, InvalidOptionError, OutOfMemoryError, WeightsFormatError } from '../errors.js';

export type { DeviceProfile, PartialProfile } from '../kernels/profile.js';

/** What a session's generate takes: generate's options but the cache, which is the session's. */
const SESSION_OPTIONS = GENERATE_OPTIONS.filter((k) => k !== 'cache' && k !== 'cacheRows');

const now = (): number => (globalThis.performance ?? Date).now();

function isCheckpoint(x: unknown): x is Checkpoint {
  return typeof x === 'object' && x !== null && 'config' in x && typeof (x as Checkpoint).read === 'function';
}

export class Engine {
  private readonly models = new Set<Model>();
  private constructor(
    readonly ctx: GpuContext,
    private readonly resolver?: SourceResolver,
  ) {}

  /** Acquires a device (or wraps `opts.device`). Throws WebGPUUnavailableError when there is none. */
  static async create(opts: EngineOptions = {}): Promise<Engine> {
    checkOptions(opts, ENGINE_OPTIONS, 'engine option');
    const ctx = opts.device
      ? contextFromDevice(opts.device, {}, opts)
      : await createContext(opts.gpu ?? (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu, opts);
    return new Engine(ctx, opts.resolveSource);
  }

  /** Resolves a source to a checkpoint (validated before any GPU work). */
  async openSource(source: ModelSource, opts: ModelLoadOptions = {}): Promise<Checkpoint> {
    checkLoadOptions(opts);
    checkDownload(opts.download);
    if (isCheckpoint(source)) return checkedCheckpoint(source);
    if (typeof source === 'string') {
      if (source.startsWith('random:')) {
        const spec = source.slice('random:'.length);
        if (!spec) throw new InvalidOptionError(`"random:" needs a model name or a config.json path, e.g. random:gpt2`);
        if (/\.json$/i.test(spec) || spec.includes('/')) {
          if (!this.resolver)
            throw new InvalidOptionError(
              `random:${spec}: reading a config file needs the Node entry (or pass a config object)`,
            );
          return this.resolver(source, opts);
        }
        return randomCheckpoint(spec, opts.seed ?? 0);
      }
      if (!this.resolver) {
        throw new InvalidOptionError(
          `model source "${source}": in a browser pass { url } (a folder with config.json and model.safetensors), { files }, or random:<name>`,
        );
      }
      return this.resolver(source, opts);
    }
    if (typeof source === 'object' && source !== null) {
      checkSourceShape(source);
      if ('url' in source) {
        const cb = opts.onProgress;
        return urlSource(source.url, {
          onProgress: cb && ((p) => cb({ phase: 'download', loaded: p.loadedBytes, total: p.totalBytes })),
        });
      }
      if ('files' in source) return fileSource(source.files);
      if ('config' in source && 'safetensors' in source) {
        return openCheckpoint(source.config, bytesSource('model.safetensors', source.safetensors), 'memory');
      }
    }
    throw new WeightsFormatError(`unrecognised model source ${JSON.stringify(source)?.slice(0, 100)}`);
  }

  /** Loads a model: resolves and validates the source, uploads weights, builds pipelines. */
  async loadModel(source: ModelSource, opts: ModelLoadOptions = {}): Promise<Model> {
    this.ctx.checkAlive();
    const t0 = now();
    // Every option is checked before the source is opened (a hub id would download first).
    checkLoadOptions(opts);
    checkKvDtype(opts.kvDtype, 'f32'); // the value; against the config once it is read
    const dtype = opts.dtype === undefined ? 'f32' : opts.dtype; // null is not a storage
    if (!WEIGHT_DTYPES.includes(dtype))
      throw new InvalidOptionError(
        `dtype must be one of ${WEIGHT_DTYPES.map((d) => `'${d}'`).join(', ')}, got ${JSON.stringify(dtype)}`,
      );
    if (opts.promptBuckets !== undefined && typeof opts.promptBuckets !== 'boolean')
      throw new InvalidOptionError(`promptBuckets must be a boolean, got ${String(opts.promptBuckets)}`);
    const profile: DeviceProfile = resolveProfile(this.ctx, opts.experimental?.profile, 'experimental.profile');
    const ckpt = await this.openSource(source, opts);
    const kvDtype = checkKvDtype(opts.kvDtype, 'f32', ckpt.config);
    const t1 = now();
    const cb = opts.onProgress;
    cb?.({ phase: 'compile', loaded: 0, total: 1 });
    const kernels = await GPT2Model.buildKernels(this.ctx, ckpt.config, profile, dtype);
    cb?.({ phase: 'compile', loaded: 1, total: 1 });
    const t2 = now();
    const weights = await uploadWeights(this.ctx, ckpt, {
      dtype,
      knPanel: profile.matmul.panel,
      onProgress: cb && ((p) => cb({ phase: 'upload', loaded: p.loadedBytes, total: p.totalBytes })),
    });
    await this.ctx.drain();
    const t3 = now();
    const model = new Model(this.ctx, ckpt.config, weights, kernels, ckpt.source);
    model.promptBuckets = opts.promptBuckets ?? profile.promptBuckets;
    model.kvDtype = kvDtype;
    try {
      await model.buildKvKernels(kvDtype); // the default caches' kernels (f16: built now, not by the first call)
    } catch (e) {
      model.destroy();
      throw e;
    }
    model.loadTimes = { resolveMs: t1 - t0, pipelinesMs: t2 - t1 + (now() - t3), uploadMs: t3 - t2 };
    this.models.add(model);
    return model;
  }

  /** Frees every model, and the device unless the host handed it over (`opts.device`). */
  destroy(): void {
    for (const m of this.models) m.destroy();
    this.models.clear();
    this.ctx.destroy();
  }
}

/**
 * A session: one KV cache plus the model, for multi-turn generation that reuses its cache. A
 * session of a SessionGroup is one row of the group's cache (`row`); the others use every row.
 */
export class Session {
  constructor(
    readonly model: Model,
    readonly cache: KVCache,
    readonly row?: number,
    readonly group?: SessionGroup,
  ) {}
  /**
   * Appends `prompt` to the session's context and generates (see GenerateOptions). In a session
   * group, turns started at the same time (in the same tick) are merged into batched steps (see
   * SessionGroup).
   */
  generate(
    prompt: string | readonly number[],
    opts: Omit<GenerateOptions, 'cache' | 'cacheRows'> = {},
  ): Promise<GenerateResult> {
    if (this.group) return this.group.turn(this, prompt, opts); // checks them too (rejecting, as its turns do)
    checkOptions(opts, SESSION_OPTIONS, 'session generation option');
    return this.model.generate(prompt, { ...opts, cache: this.cache });
  }
  /** session.generate as a stream of tokens with its result (see Model.stream and GenerationStream). */
  stream(
    prompt: string | readonly number[],
    opts: Omit<GenerateOptions, 'cache' | 'cacheRows' | 'onToken'> = {},
  ): GenerationStream {
    return streamGeneration((o) => this.generate(prompt, o), opts);
  }
  /** Every token of the context (its row, or row 0). */
  get tokens(): number[] {
    return [...this.cache.tokens[this.row ?? 0]!];
  }
  /** GPU memory of the cache and of the plans it keeps for the next turn (a group's sessions share theirs). */
  get bytes(): number {
    return this.cache.heldBytes;
  }
  /** Forgets the context (the K/V stay allocated for the next turn). Throws CacheMisuseError while generating. */
  reset(): void {
    this.cache.checkUsable(this.model);
    // The one busy check (a group's queued turns count as busy).
    this.cache.checkFree(this.row === undefined ? undefined : [this.row], this.group?.queuedRows());
    this.cache.reset(this.row);
  }
  destroy(): void {
    if (this.group) {
      throw new CacheMisuseError(
        `this session is row ${this.row} of a session group and shares the group's cache: reset() forgets its context, group.destroy() frees the memory`,
      );
    }
    this.cache.destroy();
  }
}

/** What SessionGroup.generate advances: a session of the group and the prompt appended to it. */
export interface SessionTurn {
  session: Session;
  prompt: string | readonly number[];
}

/** A session-group turn waiting for the end of the tick, to be merged with others. */
interface QueuedTurn {
  session: Session;
  ids: number[];
  opts: Omit<GenerateOptions, 'cache' | 'cacheRows'>;
  key: string;
  resolve: (r: GenerateResult) => void;
  reject: (e: unknown) => void;
  /** What its listener was given so far (a merged turn aborted by its signal rejects with it). */
  sofar: { tokens: number[]; text: string; logprobs: TokenLogprob[] };
}

/** A turn waiting to join a merged run, as the run will seat it. */
interface JoiningTurn extends Joiner {
  turn: QueuedTurn;
}

/** A merged run in flight: the turns it started with, and the turns waiting to join it. */
interface MergedRun {
  key: string;
  /** [slots]: the turn each slot served first, with its seed (joiners take slots over: `joining`). */
  first: Array<{ turn: QueuedTurn; seed: number }>;
  /** Turns done so far (their slots parked, free for a joiner unless one took them). */
  done: number;
  /** Turns waiting to take parked slots at the run's next step boundary, and those seated. */
  joining: JoinQueue<JoiningTurn>;
  /** Settles when the run has ended and freed what it made. */
  ended?: Promise<void>;
}

/**
 * A queued turn's own part of a merged run: its seed, and its sampling options (seed aside),
 * maxNewTokens and stopStrings, given explicitly so that no other turn's leak into its slot.
 */
function turnPart(q: QueuedTurn): { seed: number; own: NonNullable<GenerateOptions['perSequence']>[number] } {
  const { seed, ...sampling } = samplingPart(q.opts);
  return {
    seed: seed ?? randomSeed(),
    own: {
      ...sampling,
      maxNewTokens: q.opts.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
      stopStrings: q.opts.stopStrings ?? [],
      stopTokenIds: q.opts.stopTokenIds ?? [],
    },
  };
}

/**
 * Which turns may share batched steps: the same stopAtEos, EOS ids, includeStopString, cache mode,
 * steps in flight and logprobs; sampling options (bans included), seeds, maxNewTokens, stop strings,
 * stop token ids and signals may differ, as each row has its own (GenerateOptions.perSequence,
 * seeds; a turn's signal ends its slot alone: turnToken). undefined: the turn runs alone: it has
 * several sequences or per-sequence options of its own, no new tokens, options that do not
 * validate (its own error, not its neighbours'), or the cache stops at the window (onOverflow
 * 'error': one row's overflow would fail every merged turn).
 */
function mergeKey(
  opts: Omit<GenerateOptions, 'cache' | 'cacheRows'>,
  cache: KVCache,
  defaultDepth: number,
  { vocab_size: vocab, eos_token_id: eos }: { vocab_size: number; eos_token_id: number },
): string | undefined {
  if (
    cache.onOverflow !== 'shift' ||
    opts.numSequences !== undefined ||
    opts.seeds !== undefined ||
    opts.perSequence !== undefined
  )
    return undefined;
  try {
    const { maxNew, depth } = validateGenerate({ ...opts, pipelineDepth: opts.pipelineDepth ?? defaultDepth });
    const [seq] = sequenceOptions(opts, 1, vocab, maxNew); // the sampling options and stop token ids
    const eosIds = eosIdsOf(opts, eos, vocab);
    checkSomeIdAllowed(seq!.sampling, eosIds, [...eosIds, ...seq!.stopTokenIds], vocab, 'generate'); // (alone, it fails by itself)
    if (maxNew === 0) return undefined;
    const includeStop = opts.includeStopString ?? true;
    // Rows of a run read back the same logprobs (GenerateOptions.logprobs: one value per run).
    const lp = opts.logprobs ?? null;
    return JSON.stringify([depth, opts.stopAtEos ?? true, opts.useCache ?? true, eosIds, includeStop, lp]);
  } catch {
    return undefined;
  }
}

/** The AbortError of a merged turn cancelled by its signal: what its listener was given so far. */
function turnAborted(q: QueuedTurn): AbortError {
  const { tokens, text, logprobs } = q.sofar;
  const e = new AbortError(`generation aborted after ${tokens.length} tokens`);
  e.tokens = [...tokens];
  e.text = text;
  e.sequences = [{ tokens: [...tokens], text, ...(q.opts.logprobs === undefined ? {} : { logprobs: [...logprobs] }) }];
  return e;
}

/**
 * A merged turn's token: its own listener, and its own signal (checked before and after the
 * listener), which ends its slot alone with an AbortError carrying the tokens its listener got.
 */
function turnToken(run: MergedRun, q: QueuedTurn, ev: TokenEvent): void {
  ownListener(run, q, () => {
    if (q.opts.signal?.aborted) throw turnAborted(q);
    q.sofar.tokens.push(ev.token);
    q.sofar.text += ev.text;
    if (ev.logprob) q.sofar.logprobs.push(ev.logprob);
    q.opts.onToken?.({ ...ev, row: 0 });
    if (q.opts.signal?.aborted) throw turnAborted(q);
  });
}

/**
 * Calls a merged turn's own listener: what it throws fails that turn alone (SlotFailure: its slot
 * ends, and once its row is free the turn rejects with the error), never its neighbours'.
 */
function ownListener(run: MergedRun, q: QueuedTurn, call: () => void): void {
  try {
    call();
  } catch (e) {
    throw new SlotFailure(e, () => {
      run.done++; // its slot is parked, free for a joiner
      q.reject(e);
    });
  }
}

/**
 * Sessions that share one KV cache, a row each (`model.createSessionGroup(n)`), so that several
 * conversations advance in one batched step per token, reading the weights once per step for all
 * of them: explicitly with `group.generate([{ session, prompt }, ...])`, or implicitly: turns
 * started on its sessions in the same tick (`Promise.all(...map((s) => s.generate(...)))`, a
 * server's concurrent requests) with the same stopAtEos, useCache and pipelineDepth (sampling
 * options, seeds, maxNewTokens and stop strings may differ) are merged into one such run; each
 * still gets exactly the tokens it would get alone, with its own options, and its stats are the
 * merged run's (`stats.batchRows` turns; the steps run until the longest turn is done). A turn started while others run goes on its
 * own at once (generations on different sessions of a group may run at the same time).
 * A merged turn whose listener throws fails alone (ownListener).
 */
export class SessionGroup {
  readonly sessions: readonly Session[];
  private pending: QueuedTurn[] = [];
  private readonly runs = new Set<MergedRun>();
  /** Turns of this group running alone (settled, never rejecting), for idle(). */
  private readonly lone = new Set<Promise<void>>();
  constructor(
    readonly model: Model,
    readonly cache: KVCache,
  ) {
    this.sessions = Array.from({ length: cache.rows }, (_, r) => new Session(model, cache, r, this));
  }

  /** Whether `session` has a turn waiting to be merged (it is as good as busy). */
  queued(session: Session): boolean {
    return this.waiting().some((q) => q.session === session);
  }

  /** The rows of the turns waiting to be merged or to join a run. */
  queuedRows(): number[] {
    return this.waiting().map((q) => q.session.row!);
  }

  private waiting(): QueuedTurn[] {
    return [...this.pending, ...[...this.runs].flatMap((r) => r.joining.waiting.map((j) => j.turn))];
  }

  /**
   * A merged run in flight that `q` can join (continuous batching): same merge key, a parked slot
   * not promised to another joiner, no logit bias (the run's sampler may have no bias rows), and
   * its context plus prompt inside the window (a joiner is not shifted).
   */
  private joinable(q: QueuedTurn): MergedRun | undefined {
    if (Object.keys(q.opts.logitBias ?? {}).length > 0) return undefined;
    if (this.cache.tokens[q.session.row!]!.length + q.ids.length >= this.cache.window) return undefined;
    for (const run of this.runs)
      if (run.key === q.key && run.done - run.joining.seated > run.joining.length) return run;
    return undefined;
  }

  /** Session.generate of a member: runs the turn alone, or queues it to merge with this tick's others. */
  turn(
    session: Session,
    prompt: string | readonly number[],
    opts: Omit<GenerateOptions, 'cache' | 'cacheRows'>,
  ): Promise<GenerateResult> {
    try {
      checkOptions(opts, SESSION_OPTIONS, 'session generation option');
      const row = session.row!;
      this.model.checkAlive();
      this.cache.checkUsable(this.model);
      this.cache.checkFree([row], this.queuedRows()); // queued turns count as busy
      if (opts.numSequences !== undefined && opts.numSequences !== 1) {
        throw new InvalidOptionError(
          `numSequences ${String(opts.numSequences)}: a session of a group is one sequence (one row of the group's cache); advance several sessions together with group.generate`,
        );
      }
      const ids = this.model.promptIds(prompt);
      this.model.checkIds(ids, 'prompt'); // a bad prompt fails its own turn only
      const key = mergeKey(opts, this.cache, this.model.profile.pipelineDepth, this.model.config);
      if (key === undefined) return this.alone(ids, opts, row);
      if (opts.signal?.aborted) throw new AbortError('generation aborted before it started');
      const guard = new ListenerGuard(opts.signal); // (alone, generate guards them)
      const own = guard.options(opts);
      const queued = new Promise<GenerateResult>((resolve, reject) => {
        const signal = opts.signal;
        const drop = () => this.drop(q);
        const settled = () => signal?.removeEventListener('abort', drop);
        const sofar = { tokens: [], text: '', logprobs: [] };
        const q: QueuedTurn = {
          ...{ session, ids, opts: own, key, sofar },
          resolve: (r) => {
            settled();
            resolve(r);
          },
          reject: (e) => {
            settled();
            reject(e);
          },
        };
        signal?.addEventListener('abort', drop, { once: true });
        this.pending.push(q);
        if (this.pending.length === 1) queueMicrotask(() => this.flush());
      });
      return guard.settle(queued);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * A turn whose signal fired: still queued (to merge, or to join a run), it is dropped and rejects
   * at once; running in a merged run, its slot ends at its next token (turnToken); alone, its
   * generation stops itself.
   */
  private drop(q: QueuedTurn): void {
    const i = this.pending.indexOf(q);
    if (i >= 0) this.pending.splice(i, 1);
    else if (![...this.runs].some((run) => run.joining.remove((j) => j.turn === q))) return;
    q.reject(turnAborted(q));
  }

  /** A turn that runs alone on its row (no merge key, or no other turn to merge with), tracked for idle(). */
  private alone(
    ids: number[],
    opts: Omit<GenerateOptions, 'cache' | 'cacheRows'>,
    row: number,
  ): Promise<GenerateResult> {
    const p = this.model.generate(ids, { ...opts, cache: this.cache, cacheRows: [row] });
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    this.lone.add(settled);
    void settled.then(() => this.lone.delete(settled));
    return p;
  }

  /** Runs the queued turns: each set with one merge key as one batched generation, others alone. */
  private flush(): void {
    const turns = this.pending;
    this.pending = [];
    const sets = new Map<string, QueuedTurn[]>();
    for (const q of turns) {
      const run = this.joinable(q);
      if (run) {
        run.joining.push(this.joiner(run, q));
        continue;
      }
      const set = sets.get(q.key);
      if (set) set.push(q);
      else sets.set(q.key, [q]);
    }
    // At most as many turns per run as the logits and sampler buffers [turns, V] can hold.
    const most = rowsThatFit(this.model.ctx, this.model.config.vocab_size * 4);
    for (const all of sets.values()) {
      for (let i = 0; i < all.length; i += most) {
        const set = all.slice(i, i + most);
        if (set.length === 1) {
          const q = set[0]!;
          this.alone(q.ids, q.opts, q.session.row!).then(q.resolve, q.reject);
        } else this.merge(set);
      }
    }
  }

  /** Starts one batched generation for `set` (turns with one merge key); turns may join it later. */
  private merge(set: QueuedTurn[]): void {
    const parts = set.map(turnPart);
    const run: MergedRun = {
      key: set[0]!.key,
      first: set.map((turn, i) => ({ turn, seed: parts[i]!.seed })),
      done: 0,
      joining: new JoinQueue<JoiningTurn>(),
    };
    this.runs.add(run);
    // The key made stopAtEos, useCache and pipelineDepth equal; each row keeps its own sampling
    // options, new tokens and stop strings (given explicitly, so none of set[0]'s leak).
    const {
      onToken: _onToken,
      onSequenceDone: _done,
      maxNewTokens: _maxNew,
      stopStrings: _stops,
      signal: _signal, // each turn's own (turnToken)
      numSequences: _rows, // 1 or left out (checked in turn): one row per turn
      ...common
    } = generationPart(set[0]!.opts);
    run.ended = generateBatch(
      this.model,
      set.map((q) => q.ids),
      {
        ...common,
        seeds: parts.map((t) => t.seed),
        perSequence: parts.map((t) => t.own),
        cache: this.cache,
        cacheRows: set.map((q) => q.session.row!),
        // These events are the first turns' (a joiner's events go to its own listeners).
        onToken: (ev) => turnToken(run, set[ev.row]!, ev),
        onSequenceDone: (ev) => this.turnDone(run, run.first[ev.row]!.turn, run.first[ev.row]!.seed, ev),
        // Turns that arrive while the run goes on take its parked slots (continuous batching).
        joiners: run.joining,
      },
    )
      .catch((e) => this.slotTurns(run).forEach((q) => q.reject(e))) // turns already resolved stay so
      .finally(() => {
        // Turns still waiting to join (the run ended first) go back to the queue.
        this.runs.delete(run);
        const back = run.joining.takeWaiting();
        if (back.length === 0) return;
        const first = this.pending.length === 0;
        this.pending.push(...back.map((j) => j.turn));
        if (first) queueMicrotask(() => this.flush());
      })
      .then(() => undefined);
  }

  /** The turn each slot of `run` serves now (a joiner's once seated there, else the first). */
  private slotTurns(run: MergedRun): QueuedTurn[] {
    return run.first.map((f, slot) => run.joining.seatedIn(slot)?.turn ?? f.turn);
  }

  /**
   * `q` as a joiner of `run`: its own options (valid: mergeKey checked them), seed and listeners;
   * the run seats it in a parked slot at a step boundary.
   */
  private joiner(run: MergedRun, q: QueuedTurn): JoiningTurn {
    const { seed, own } = turnPart(q);
    return {
      turn: q,
      row: q.session.row!,
      ids: q.ids,
      seed,
      sampling: validateSampling(samplingPart(own), this.model.config.vocab_size),
      maxNew: own.maxNewTokens!,
      stopStrings: own.stopStrings,
      stopTokenIds: own.stopTokenIds ?? [],
      onToken: (ev) => turnToken(run, q, ev),
      onSequenceDone: (ev) => this.turnDone(run, q, seed, ev),
    };
  }

  /**
   * A turn's sequence is done: the turn resolves at once, and its session is free again (the run
   * goes on for the others without touching its row); its slot may take a joiner.
   */
  private turnDone(run: MergedRun, q: QueuedTurn, seed: number, { sequence, stats }: SequenceDoneEvent): void {
    run.done++;
    try {
      q.opts.onSequenceDone?.({ row: 0, sequence, stats });
    } catch (e) {
      q.reject(e); // this turn's own failure; the run goes on for the others
      return;
    }
    q.resolve({ promptIds: q.ids, seed, seeds: [seed], sequences: [sequence], stats });
  }

  /**
   * Resolves once nothing of this group is in flight: no merged run (a turn resolves when its own
   * sequence is done, while its run may go on for others or take new turns, and frees its plans
   * and sampler state when it ends), no turn running alone, none queued. Await this before
   * measuring memory, or before destroy() to let the work finish rather than fail.
   */
  async idle(): Promise<void> {
    for (;;) {
      await Promise.resolve(); // a flush queued in this tick may start a run
      const work = [...[...this.runs].map((r) => r.ended), ...this.lone];
      if (work.length === 0 && this.pending.length === 0) return;
      await Promise.all(work);
      if (work.length === 0) await new Promise((res) => setTimeout(res, 0));
    }
  }
  /**
   * Appends each turn's prompt to its session and generates for all of them in batched steps;
   * sequence i of the result is turns[i] (seed deriveSeed(seed, i)), and equals that session
   * generating alone with that seed.
   */
  async generate(
    turns: readonly SessionTurn[],
    opts: Omit<GenerateOptions, 'cache' | 'cacheRows' | 'numSequences'> = {},
  ): Promise<GenerateResult> {
    checkOptions(
      opts,
      SESSION_OPTIONS.filter((k) => k !== 'numSequences'),
      'group generation option',
    );
    if (!Array.isArray(turns) || turns.length === 0) {
      throw new InvalidOptionError(
        `SessionGroup.generate needs a non-empty array of { session, prompt }, got ${JSON.stringify(turns)?.slice(0, 80)}`,
      );
    }
    const rows = turns.map((t, i) => {
      const s = (t as Partial<SessionTurn> | null)?.session;
      if (!(s instanceof Session) || s.group !== this) {
        throw new CacheMisuseError(`turns[${i}].session is not a session of this group; use group.sessions[k]`);
      }
      const first = turns.findIndex((u) => u.session === s);
      if (first < i)
        throw new InvalidOptionError(
          `turns[${i}].session is also turns[${first}]'s: a session takes one turn per call (its row holds one context)`,
        );
      if (this.queued(s))
        throw new CacheMisuseError(
          `KV cache #${this.cache.id} is busy (row ${s.row}): turns[${i}].session has a turn about to start; await it first`,
        );
      return s.row!;
    });
    return generateBatch(
      this.model,
      turns.map((t) => t.prompt),
      { ...opts, cache: this.cache, cacheRows: rows },
    );
  }
  /** GPU memory of the group's cache and of the plans it keeps for the next turns. */
  get bytes(): number {
    return this.cache.heldBytes;
  }
  /** Frees the group's cache; its sessions cannot be used afterwards. */
  destroy(): void {
    if (this.pending.length)
      throw new CacheMisuseError(
        `KV cache #${this.cache.id} is busy: ${this.pending.length} turn(s) are about to start; await them before destroying the group`,
      );
    this.cache.destroy();
  }
}

export class Model extends GPT2Model {
  /** How long loading took: resolving/validating the source, building pipelines, uploading weights. */
  loadTimes = { resolveMs: 0, pipelinesMs: 0, uploadMs: 0 };

  /** GPU bytes its weights hold (every matrix in its dtype, q8 / q4 scales, biases, layer norms). */
  get bytes(): number {
    return this.weights.bytes;
  }

  /** Generates; see GenerateOptions. */
  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): Promise<GenerateResult> {
    return generate(this, prompt, opts);
  }

  /** Several prompts advanced together in batched steps (sequence i: seed deriveSeed(seed, i)). */
  generateBatch(
    prompts: Array<string | readonly number[]>,
    opts: Omit<GenerateOptions, 'numSequences'> = {},
  ): Promise<GenerateResult> {
    return generateBatch(this, prompts, opts);
  }

  /**
   * Streams tokens as they are read back: `for await (const t of model.stream(...))`, then
   * `await stream.result` for the finish reasons and statistics (see GenerationStream). Leaving
   * the loop early (break / return / throw) cancels the generation and frees its buffers.
   */
  stream(prompt: string | readonly number[], opts: Omit<GenerateOptions, 'onToken'> = {}): GenerationStream {
    return streamGeneration((o) => generate(this, prompt, o), opts);
  }

  /**
   * Log-probability of every token of `text` given the ones before it (and `opts.context`),
   * computed on the GPU; reads back (2 + 2 top) words per token, never the logits.
   */
  score(text: string | readonly number[], opts: ScoreOptions = {}): Promise<ScoreResult> {
    return score(this, text, opts);
  }

  /** Perplexity by HF's sliding-window method (default window n_positions, stride window / 2). */
  perplexity(
    text: string | readonly number[],
    opts: Omit<ScoreOptions, 'top' | 'context'> = {},
  ): Promise<PerplexityResult> {
    return perplexity(this, text, opts);
  }

  /** Beam search; see BeamOptions. Resolves to the prompt's ids and the hypotheses, best first. */
  beamSearch(prompt: string | readonly number[], opts: BeamOptions): Promise<BeamResult> {
    return beamSearch(this, prompt, opts);
  }

  /** A session with its own KV cache (many sessions can share one model). */
  async createSession(opts: CacheOptions = {}): Promise<Session> {
    return new Session(this, await this.createCache(opts));
  }

  /**
   * `count` sessions sharing one KV cache of `count` rows (capacity, onOverflow, keep as for
   * createSession), which SessionGroup.generate advances together in batched steps.
   */
  async createSessionGroup(count: number, opts: Omit<CacheOptions, 'rows'> = {}): Promise<SessionGroup> {
    checkOptions(opts, CACHE_OPTIONS, 'cache option');
    if (!Number.isInteger(count) || count < 1)
      throw new InvalidOptionError(
        `createSessionGroup: count must be a positive integer (sessions in the group), got ${String(count)}`,
      );
    if ((opts as CacheOptions).rows !== undefined)
      throw new InvalidOptionError(
        'createSessionGroup: the group has one cache row per session; give the count, not rows',
      );
    let cache: KVCache;
    try {
      cache = await this.createCache({ ...opts, rows: count });
    } catch (e) {
      // The cache speaks of rows; here each row is a session.
      if (e instanceof OutOfMemoryError || e instanceof InvalidOptionError) {
        const Err = e instanceof OutOfMemoryError ? OutOfMemoryError : InvalidOptionError;
        throw new Err(`createSessionGroup(${count}): one cache row per session: ${e.message}`, { cause: e });
      }
      throw e;
    }
    return new SessionGroup(this, cache);
  }

  /** Draws `count` tokens on the GPU from a logits vector you provide. */
  sample(logits: Float32Array, count: number, opts: SamplingOptions = {}, prevTokens?: ArrayLike<number>) {
    this.checkAlive();
    return sampleOnGpu(this.ctx, logits, count, opts, prevTokens);
  }
}

export { AbortError };
