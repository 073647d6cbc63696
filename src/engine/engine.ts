/**
 * The public entry point: an Engine owns a GPU context; it loads Models; a Model generates text,
 * runs beam search, samples from given logits and hands out Sessions (KV caches).
 *
 *   const engine = await Engine.create({ gpu: navigator.gpu });   // Node: createEngine() from the package
 *   const model = await engine.loadModel('random:gpt2');
 *   const res = await model.generate('Hello', { maxNewTokens: 20, temperature: 0 });
 *   model.destroy(); engine.destroy();
 */
import type { MatmulOptions } from '../kernels/matmul.js';
import type { AttentionOptions } from '../kernels/attention.js';
import { contextFromDevice, createContext, GpuContext, type ContextOptions } from './device.js';
import { GPT2Model, type LoadOptions } from './model.js';
import { generate, generateBatch, type GenerateOptions, type GenerateResult, type TokenEvent } from './generate.js';
import { beamSearch, type BeamHypothesis, type BeamOptions } from '../sampling/beam.js';
import { sample as sampleOnGpu } from '../sampling/sampler.js';
import type { SamplingOptions } from '../sampling/options.js';
import type { CacheOptions, KVCache } from './kvcache.js';
import { openCheckpoint, type Checkpoint } from './checkpoint.js';
import { uploadWeights } from './weights.js';
import { randomCheckpoint } from './random.js';
import { bytesSource } from './safetensors.js';
import { urlSource, fileSource } from './sources-web.js';
import { AbortError, CacheMisuseError, InvalidOptionError, WeightsFormatError } from '../errors.js';

/** Progress of a load: phase 'download' | 'read' | 'upload' | 'compile', bytes or items. */
export interface LoadProgress {
  phase: string;
  loaded: number;
  total: number;
}

/** Where a model comes from. Strings: 'random:<name|config path>' anywhere; in Node also a local
 *  directory or a Hugging Face id (see createEngine in the Node entry). */
export type ModelSource =
  | string
  | Checkpoint
  | { url: string }
  | { files: File[] }
  | { config: unknown; safetensors: ArrayBuffer | Uint8Array };

export type SourceResolver = (source: string, opts: { onProgress?: (p: LoadProgress) => void }) => Promise<Checkpoint>;

export interface EngineOptions extends ContextOptions {
  /** The WebGPU entry (navigator.gpu, or Node's from nodeGPU()). */
  gpu?: GPU;
  /** Or a device the host already has: the engine uses it and never destroys it. */
  device?: GPUDevice;
  /** Resolves string sources other than random: (the Node entry installs one for dirs and HF ids). */
  resolveSource?: SourceResolver;
}

export interface ModelLoadOptions extends LoadOptions {
  onProgress?: (p: LoadProgress) => void;
  /** Seed of random: weights (default 0). */
  seed?: number;
  /**
   * Overrides the matmul kernel's per-adapter choices (tests run the GPU variants on lavapipe with
   * it; benchmarks compare variants). Default: chosen from the adapter.
   */
  matmul?: Omit<MatmulOptions, 'layernorm'>;
  /** The same for the attention kernel: decodeWg (threads per GPU decode workgroup; 0: the 32-thread kernel), lanes (CPU decode kernel). */
  attention?: Pick<AttentionOptions, 'decodeWg' | 'lanes'>;
}

const now = (): number => (globalThis.performance ?? Date).now();

function isCheckpoint(x: unknown): x is Checkpoint {
  return typeof x === 'object' && x !== null && 'config' in x && typeof (x as Checkpoint).read === 'function';
}

export class Engine {
  private readonly models = new Set<Model>();
  private constructor(readonly ctx: GpuContext, private readonly resolver?: SourceResolver) {}

  /** Acquires a device (or wraps `opts.device`). Throws WebGPUUnavailableError when there is none. */
  static async create(opts: EngineOptions = {}): Promise<Engine> {
    const ctx = opts.device ? contextFromDevice(opts.device, {}, opts) : await createContext(opts.gpu ?? (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu, opts);
    return new Engine(ctx, opts.resolveSource);
  }

  /** Resolves a source to a checkpoint (validated before any GPU work). */
  async openSource(source: ModelSource, opts: ModelLoadOptions = {}): Promise<Checkpoint> {
    if (isCheckpoint(source)) return source;
    if (typeof source === 'string') {
      if (source.startsWith('random:')) {
        const spec = source.slice('random:'.length);
        if (!spec) throw new InvalidOptionError(`"random:" needs a model name or a config.json path, e.g. random:gpt2`);
        if (/\.json$/i.test(spec) || spec.includes('/')) {
          if (!this.resolver) throw new InvalidOptionError(`random:${spec}: reading a config file needs the Node entry (or pass a config object)`);
          return this.resolver(source, opts);
        }
        return randomCheckpoint(spec, opts.seed ?? 0);
      }
      if (!this.resolver) {
        throw new InvalidOptionError(`model source "${source}": in a browser pass { url } (a folder with config.json and model.safetensors), { files }, or random:<name>`);
      }
      return this.resolver(source, opts);
    }
    if (typeof source === 'object' && source !== null) {
      if ('url' in source) {
        const cb = opts.onProgress;
        return urlSource(source.url, { onProgress: cb && ((p) => cb({ phase: 'download', loaded: p.loadedBytes, total: p.totalBytes })) });
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
    const ckpt = await this.openSource(source, opts);
    const dtype = opts.dtype ?? 'f32';
    if (dtype !== 'f32' && dtype !== 'f16') throw new InvalidOptionError(`dtype must be 'f32' or 'f16', got ${String(dtype)}`);
    const t1 = now();
    const kernels = await GPT2Model.buildKernels(this.ctx, ckpt.config, opts.matmul, opts.attention);
    const t2 = now();
    const cb = opts.onProgress;
    const weights = await uploadWeights(this.ctx, ckpt, { dtype, knPanel: kernels.matmul.knPanel, onProgress: cb && ((p) => cb({ phase: 'upload', loaded: p.loadedBytes, total: p.totalBytes })) });
    await this.ctx.drain();
    const t3 = now();
    const model = new Model(this.ctx, ckpt.config, weights, kernels, ckpt.source);
    model.loadTimes = { resolve_ms: t1 - t0, pipelines_ms: t2 - t1, upload_ms: t3 - t2 };
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
  constructor(readonly model: Model, readonly cache: KVCache, readonly row?: number, readonly group?: SessionGroup) {}
  /** Appends `prompt` to the session's context and generates (see GenerateOptions). */
  generate(prompt: string | readonly number[], opts: Omit<GenerateOptions, 'cache' | 'cacheRows'> = {}): Promise<GenerateResult> {
    return this.model.generate(prompt, { ...opts, cache: this.cache, ...(this.row === undefined ? {} : { cacheRows: [this.row] }) });
  }
  /** Every token of the context (its row, or row 0). */
  get tokens(): number[] {
    return [...this.cache.tokens[this.row ?? 0]!];
  }
  /** GPU memory of the cache (a group's sessions share theirs). */
  get bytes(): number {
    return this.cache.bytes;
  }
  /** Forgets the context (the K/V stay allocated for the next turn). Throws CacheMisuseError while generating. */
  reset(): void {
    this.cache.checkUsable(this.model);
    if (this.row === undefined ? this.cache.busy : this.cache.rowBusy(this.row)) {
      throw new CacheMisuseError(`session is busy with a generation; await or cancel it before reset()`);
    }
    this.cache.reset(this.row);
  }
  destroy(): void {
    if (this.group) {
      throw new CacheMisuseError(`this session is row ${this.row} of a session group and shares the group's cache: reset() forgets its context, group.destroy() frees the memory`);
    }
    this.cache.destroy();
  }
}

/** What SessionGroup.generate advances: a session of the group and the prompt appended to it. */
export interface SessionTurn {
  session: Session;
  prompt: string | readonly number[];
}

/**
 * Sessions that share one KV cache, a row each (`model.createSessionGroup(n)`), so that several
 * conversations advance in one batched step per token: `group.generate([{ session, prompt }, ...])`
 * reads the weights once per step for all of them. Each session can also generate alone, and
 * generations on different sessions of a group may run at the same time.
 */
export class SessionGroup {
  readonly sessions: readonly Session[];
  constructor(readonly model: Model, readonly cache: KVCache) {
    this.sessions = Array.from({ length: cache.rows }, (_, r) => new Session(model, cache, r, this));
  }
  /**
   * Appends each turn's prompt to its session and generates for all of them in batched steps;
   * sequence i of the result is turns[i] (seed deriveSeed(seed, i)), and equals that session
   * generating alone with that seed.
   */
  generate(turns: readonly SessionTurn[], opts: Omit<GenerateOptions, 'cache' | 'cacheRows' | 'numSequences'> = {}): Promise<GenerateResult> {
    if (!Array.isArray(turns) || turns.length === 0) {
      throw new InvalidOptionError(`SessionGroup.generate needs a non-empty array of { session, prompt }, got ${JSON.stringify(turns)?.slice(0, 80)}`);
    }
    const rows = turns.map((t, i) => {
      const s = (t as Partial<SessionTurn> | null)?.session;
      if (!(s instanceof Session) || s.group !== this) {
        throw new CacheMisuseError(`turns[${i}].session is not a session of this group; use group.sessions[k]`);
      }
      return s.row!;
    });
    return generateBatch(this.model, turns.map((t) => t.prompt), { ...opts, cache: this.cache, cacheRows: rows });
  }
  get bytes(): number {
    return this.cache.bytes;
  }
  /** Frees the group's cache; its sessions cannot be used afterwards. */
  destroy(): void {
    this.cache.destroy();
  }
}

export class Model extends GPT2Model {
  /** How long loading took: resolving/validating the source, building pipelines, uploading weights. */
  loadTimes = { resolve_ms: 0, pipelines_ms: 0, upload_ms: 0 };

  /** Generates; see GenerateOptions. */
  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): Promise<GenerateResult> {
    return generate(this, prompt, opts);
  }

  /** Several prompts advanced together in batched steps (sequence i: seed deriveSeed(seed, i)). */
  generateBatch(prompts: Array<string | readonly number[]>, opts: Omit<GenerateOptions, 'numSequences'> = {}): Promise<GenerateResult> {
    return generateBatch(this, prompts, opts);
  }

  /**
   * Streams tokens as they are read back: `for await (const t of model.stream(...))`. Leaving the
   * loop early (break / return / throw) cancels the generation and frees its buffers.
   */
  async *stream(prompt: string | readonly number[], opts: Omit<GenerateOptions, 'onToken'> = {}): AsyncGenerator<TokenEvent, GenerateResult> {
    const queue: TokenEvent[] = [];
    let wake: (() => void) | null = null;
    let done = false;
    let failure: unknown;
    let result: GenerateResult | undefined;
    // Our own controller, following the caller's signal, so an early exit can cancel.
    const ac = new AbortController();
    const outer = opts.signal;
    const follow = () => ac.abort(outer?.reason);
    if (outer?.aborted) ac.abort(outer.reason);
    else outer?.addEventListener('abort', follow, { once: true });
    const p = generate(this, prompt, {
      ...opts,
      signal: ac.signal,
      onToken: (ev) => {
        queue.push(ev);
        wake?.();
      },
    }).then(
      (r) => { result = r; done = true; wake?.(); },
      (e) => { failure = e; done = true; wake?.(); },
    );
    try {
      while (true) {
        while (queue.length) yield queue.shift()!;
        if (done) break;
        await new Promise<void>((res) => (wake = res));
        wake = null;
      }
      await p;
      if (failure) throw failure;
      return result!;
    } finally {
      outer?.removeEventListener('abort', follow);
      if (!done) {
        ac.abort();
        await p; // settles (AbortError swallowed above) once the loop has freed its buffers
      }
    }
  }

  /** Beam search; see BeamOptions. */
  beamSearch(prompt: string | readonly number[], opts: BeamOptions): Promise<BeamHypothesis[]> {
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
    if (!Number.isInteger(count) || count < 1) throw new InvalidOptionError(`createSessionGroup: count must be a positive integer (sessions in the group), got ${String(count)}`);
    if ((opts as CacheOptions).rows !== undefined) throw new InvalidOptionError('createSessionGroup: the group has one cache row per session; give the count, not rows');
    return new SessionGroup(this, await this.createCache({ ...opts, rows: count }));
  }

  /** Draws `count` tokens on the GPU from a logits vector you provide. */
  sample(logits: Float32Array, count: number, opts: SamplingOptions = {}, prevTokens?: ArrayLike<number>) {
    this.checkAlive();
    return sampleOnGpu(this.ctx, logits, count, opts, prevTokens);
  }
}

export { AbortError };
