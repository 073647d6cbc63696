/**
 * GPT2Model: weights on the GPU, the kernels built once, and forward plans.
 *
 * A forward plan is the list of dispatches that takes T tokens (ids [T] u32, meta [T] (row, pos))
 * through the whole stack, writing K/V into a cache and logits for R selected tokens:
 *
 *   x   [T, C]     residual stream          qkv [T, 3C]   c_attn output
 *   h   [T, C]     layer-norm output        att [T, C]    attention output
 *   fc  [T, 4C]    gelu(c_fc) output        hl  [R, C]    ln_f output of the selected tokens
 *   logits [R, V]  stays on the GPU; the sampler reads it
 *
 * Plans are built once per (cache, T, R) shape and then re-encoded every step: per step only the
 * small ids/meta/lastIdx inputs change (written with queue.writeBuffer, or by the sampler on the
 * GPU for ids), nothing is compiled or allocated. A finished generation hands its plans back to
 * its cache (keepPlan), and the next generation on that cache takes them (takePlan) instead of
 * building them again: building one is ~90 bind groups plus its buffers (~4 ms of host time on
 * lavapipe), which would otherwise be paid twice per turn of a session (decode + prompt plans).
 */
import type { GpuContext } from '../gpu/device.js';
import { headDim, type GPT2Config } from './config.js';
import type { GPT2Weights, WeightDType } from './weights.js';
import {
  checkKvDtype,
  kvCacheBytes,
  KVCache,
  CACHE_OPTIONS,
  type CacheOptions,
  type CacheOwner,
  type KvDtype,
  type Stashable,
} from './kvcache.js';
import { Dispatch, encodeDispatches, GpuTensor, Owned } from '../gpu/common.js';
import { LayerNormKernel } from '../kernels/layernorm.js';
import { MatmulKernel } from '../kernels/matmul.js';
import { EmbeddingKernel } from '../kernels/embedding.js';
import { AttentionKernel } from '../kernels/attention.js';
import type { DeviceProfile } from '../kernels/profile.js';
import { KvWriteKernel, KvGatherKernel } from '../kernels/kvcache.js';
import { GatherRowsKernel } from '../kernels/elementwise.js';
import { Sampler } from '../kernels/sampler.js';
import { BeamKernel } from '../kernels/beam.js';
import { DestroyedError, InvalidOptionError, PromptError, ShapeError } from '../errors.js';
import { CallErrors } from '../gpu/call-errors.js';
import { checkOptions } from '../sampling/names.js';
import { checkVocabRows, rowsThatFit } from '../gpu/limits.js';
import { gpt2Tokenizer, type Tokenizer } from './tokenizer.js';

const STORAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

export interface Kernels {
  /** The device profile they were built for (every kernel choice). */
  profile: DeviceProfile;
  layernorm: LayerNormKernel;
  matmul: MatmulKernel;
  embedding: EmbeddingKernel;
  /** The kernels for f32 caches; an f16 cache's are kvKernels('f16'). */
  attention: AttentionKernel;
  kvWrite: KvWriteKernel;
  /** Copies words: caches of either dtype. */
  kvGather: KvGatherKernel;
  gatherRows: GatherRowsKernel;
  sampler: Sampler;
  beam: BeamKernel;
}

function list(d: Dispatch | Dispatch[]): Dispatch[] {
  return Array.isArray(d) ? d : [d];
}

let nextModelId = 1;

/** meta [count, 2] u32 for `count` consecutive tokens of one row: (row, from + i). */
export function rowMeta(row: number, from: number, count: number): Uint32Array {
  const meta = new Uint32Array(2 * count);
  for (let t = 0; t < count; t++) {
    meta[2 * t] = row;
    meta[2 * t + 1] = from + t;
  }
  return meta;
}

/**
 * The meta row of a parked decode token: a sequence that finished and left its cache row while the
 * others of its step go on. Its token writes no K/V anywhere and its attention output is NaN (the
 * kernels' out-of-range row rule), which stays in its own row of every later kernel; the sampler
 * must be latched for it (Sampler.park) so it never reads those logits.
 */
export const PARKED_ROW = 0xffffffff;

/** meta [R, 2] of a decode step: token r is cache row rows[r] (default r; PARKED_ROW: parked) at positions[r]. */
export function decodeMeta(positions: ArrayLike<number>, rows?: ArrayLike<number>): Uint32Array {
  const meta = new Uint32Array(2 * positions.length);
  for (let r = 0; r < positions.length; r++) {
    meta[2 * r] = rows ? rows[r]! : r;
    meta[2 * r + 1] = positions[r]!;
  }
  return meta;
}

export interface PlanOptions {
  /**
   * A decode plan: T = R <= cache.rows, every token in a cache row of its own (token r is row r,
   * or row rows[r] of the cache rows a generation advances) and logits wanted for every token in
   * order (both checked by `write`). Its attention then writes each token's key and value
   * to the cache itself (AttentionArgs.writeKv) and its LM head reads the residual stream without
   * the last-token gather: n_layer + 1 dispatches fewer than a general plan.
   */
  decode?: boolean;
}

/**
 * Idle plans a cache keeps for the next generations: at most PLAN_STASH_COUNT, and at most
 * PLAN_STASH_BYTES of their buffers (activations [T, 10 C] f32, logits [R, V] f32, uniforms:
 * ~0.25 MiB for a gpt2 decode plan, ~30 KiB per token of a gpt2 prompt plan), the least recently
 * used freed first. A chat turn needs two (its decode plan and its prompt's).
 */
export const PLAN_STASH_COUNT = 4;
export const PLAN_STASH_BYTES = 8 * 1024 * 1024;

/**
 * The 'blocks' attention scratch a prompt plan of T tokens on a cache of `capacity` slots gets
 * (ForwardPlan, promptAttention): where the profile's prompt attention takes 'blocks' given one
 * (from BLOCKS_MIN_T tokens on, profiles whose prompt attention is 'blocks': CPU adapters without
 * subgroups), else none (zeros).
 */
function promptScratch(
  att: AttentionKernel,
  T: number,
  capacity: number,
  cfg: GPT2Config,
): { scores: number; queries: number; tc: number } {
  const blocks = att.variantFor(T, { scratch: true }) === 'blocks';
  return blocks ? att.blocksScratch(T, capacity, cfg.n_embd, cfg.n_head) : { scores: 0, queries: 0, tc: 0 };
}

/** A forward pass over T tokens of one cache, producing logits for R of them. */
export class ForwardPlan implements Stashable {
  readonly owned: Owned;
  readonly ids: GpuTensor; // [T] u32
  readonly meta: GpuTensor; // [T, 2] u32 (row, pos)
  readonly lastIdx: GpuTensor; // [R] u32: which tokens' logits to compute (unread by a decode plan: every token's, in order)
  readonly logits: GpuTensor; // [R, V] f32
  readonly dispatches: Dispatch[] = [];
  /** What the plan is used for, when a caller reuses plans (e.g. 'reencode'). */
  tag = '';

  readonly decode: boolean;

  constructor(
    readonly model: GPT2Model,
    readonly cache: KVCache,
    readonly T: number,
    readonly R: number,
    opts: PlanOptions = {},
  ) {
    const { ctx, config: cfg, weights: w, kernels: k } = model;
    this.decode = opts.decode === true;
    if (this.decode && !(R === T && T >= 1 && T <= cache.rows)) {
      throw new ShapeError(
        `a decode plan feeds one token to each of at most the cache's ${cache.rows} rows and reads all their logits (T = R <= ${cache.rows}); got T ${T}, R ${R}`,
      );
    }
    const C = cfg.n_embd;
    const V = cfg.vocab_size;
    const kv = model.kvKernels(cache.kvDtype); // attention and kv_write for the cache's dtype
    const o = (this.owned = new Owned(ctx));
    const buf = (label: string, shape: number[], dtype: 'f32' | 'u32' = 'f32'): GpuTensor => ({
      buffer: o.buffer(`${label}[${shape.join(',')}]`, shape.reduce((a, b) => a * b, 1) * 4, STORAGE()),
      offset: 0,
      shape,
      dtype,
    });
    try {
      this.ids = buf('ids', [T], 'u32');
      this.meta = buf('meta', [T, 2], 'u32');
      this.lastIdx = buf('lastIdx', [R], 'u32');
      const x = buf('x', [T, C]);
      const h = buf('h', [T, C]);
      const qkv = buf('qkv', [T, 3 * C]);
      const att = buf('att', [T, C]);
      const fc = buf('fc', [T, 4 * C]);
      const hl = this.decode ? x : buf('hl', [R, C]); // a decode plan's selected rows are x itself
      const hn = buf('hn', [R, C]); // ln_f(hl) where the LM head does not fuse it (R may exceed T: beams)
      this.logits = buf('logits', [R, V]);
      const eps = cfg.layer_norm_epsilon;
      // A decode plan (one token per row) gains nothing from the prompt attention, whose blocks of
      // tokens would all mix rows: it takes the profile's decode attention; so does a step of one
      // token in every row. Other steps take the profile's prompt attention for T tokens.
      const oneQuery = this.decode || (T === cache.rows && R === T && T > 1);
      const attnVariant = oneQuery ? kv.attention.decode : undefined;
      // Long prompts where the profile says 'blocks': attention as two matrix products through
      // scratch buffers that all layers share (their dispatches run one after another).
      const blocks = oneQuery ? undefined : promptScratch(kv.attention, T, cache.capacity, cfg);
      const scratch = blocks?.scores
        ? { scores: buf('att.scores', [blocks.scores]), queries: buf('att.queries', [blocks.queries]) } // [n_head, capacity, tc], [n_head, D, tc]
        : undefined;
      const d = this.dispatches;
      d.push(
        ...list(k.embedding.bind(o, { ids: this.ids, meta: this.meta, wte: w.wte, wpe: w.wpe, out: x }, 'wte+wpe')),
      );
      for (let l = 0; l < cfg.n_layer; l++) {
        const L = w.h[l]!;
        const kc = cache.kTensor(l);
        const vc = cache.vTensor(l);
        // ln_1 / ln_2 / ln_f run in the following matmul's prologue where it can (h: their output otherwise)
        const ln1 = { gamma: L.ln_1.weight, beta: L.ln_1.bias, eps, scratch: h };
        d.push(
          ...list(
            k.matmul.bind(
              o,
              { x, ln: ln1, w: L.attn.c_attn.weight, layout: 'kn', bias: L.attn.c_attn.bias, out: qkv },
              `h.${l}.attn.c_attn`,
            ),
          ),
        );
        if (!this.decode)
          d.push(...list(kv.kvWrite.bind(o, { qkv, meta: this.meta, kCache: kc, vCache: vc }, `h.${l}.kv_write`)));
        d.push(
          ...list(
            kv.attention.bind(
              o,
              {
                qkv,
                kCache: kc,
                vCache: vc,
                meta: this.meta,
                out: att,
                nHead: cfg.n_head,
                variant: attnVariant,
                writeKv: this.decode,
                scratch,
              },
              `h.${l}.attn`,
            ),
          ),
        );
        d.push(
          ...list(
            k.matmul.bind(
              o,
              { x: att, w: L.attn.c_proj.weight, layout: 'kn', bias: L.attn.c_proj.bias, accumulate: true, out: x },
              `h.${l}.attn.c_proj`,
            ),
          ),
        );
        const ln2 = { gamma: L.ln_2.weight, beta: L.ln_2.bias, eps, scratch: h };
        d.push(
          ...list(
            k.matmul.bind(
              o,
              { x, ln: ln2, w: L.mlp.c_fc.weight, layout: 'kn', bias: L.mlp.c_fc.bias, activation: 'gelu', out: fc },
              `h.${l}.mlp.c_fc`,
            ),
          ),
        );
        d.push(
          ...list(
            k.matmul.bind(
              o,
              { x: fc, w: L.mlp.c_proj.weight, layout: 'kn', bias: L.mlp.c_proj.bias, accumulate: true, out: x },
              `h.${l}.mlp.c_proj`,
            ),
          ),
        );
      }
      // Layer norm acts per row, so ln_f follows the gather of the R rows whose logits are wanted
      // (a decode plan wants every token's, in order: the LM head reads x itself).
      if (!this.decode) d.push(...list(k.gatherRows.bind(o, { x, idx: this.lastIdx, out: hl }, 'last_tokens')));
      const lnf = { gamma: w.ln_f.weight, beta: w.ln_f.bias, eps, scratch: hn };
      d.push(...list(k.matmul.bind(o, { x: hl, ln: lnf, w: w.wte, layout: 'nk', out: this.logits }, 'lm_head')));
      model.plansBuilt++;
    } catch (e) {
      o.destroy();
      throw e;
    }
  }

  /**
   * Writes this step's inputs. `ids` may be omitted when the sampler already wrote them on the GPU.
   * A plan that is not a decode plan takes fewer than T tokens too (a bucketed prompt plan): the
   * tokens past them are parked (meta row PARKED_ROW, id 0: no K/V written, their rows' results
   * unread).
   */
  write(input: { ids?: ArrayLike<number>; meta: Uint32Array; lastIdx?: Uint32Array }): void {
    const n = input.meta.length / 2;
    if (n < this.T) {
      if (this.decode || n < 1 || !Number.isInteger(n))
        throw new ShapeError(
          `${this.decode ? 'decode ' : ''}plan for ${this.T} tokens given meta for ${n}${this.decode ? '; a decode plan takes exactly T tokens' : ''}`,
        );
      if (input.ids && input.ids.length !== n)
        throw new ShapeError(`plan write: ${input.ids.length} ids for meta of ${n} tokens`);
      if (input.lastIdx && input.lastIdx.some((i) => i >= n))
        throw new ShapeError(
          `plan write: lastIdx ${Array.from(input.lastIdx).join(',')} points past the ${n} tokens given`,
        );
      const meta = new Uint32Array(2 * this.T).fill(PARKED_ROW);
      meta.set(input.meta);
      for (let t = n; t < this.T; t++) meta[2 * t + 1] = 0;
      let ids: Uint32Array | undefined;
      if (input.ids) {
        ids = new Uint32Array(this.T);
        ids.set(Array.from(input.ids));
      }
      input = { ...input, meta, ...(ids ? { ids } : {}) };
    }
    if (this.decode) {
      // The attention's own K/V writes are only race-free with one token per row.
      const seen = new Map<number, number>(); // row -> token
      for (let r = 0; r < this.T; r++) {
        const row = input.meta[2 * r]!;
        if (row === PARKED_ROW) continue;
        if (row >= this.cache.rows)
          throw new ShapeError(
            `decode plan: token ${r} is in row ${row}, outside the cache's ${this.cache.rows} rows; build the meta with decodeMeta`,
          );
        if (seen.has(row))
          throw new ShapeError(
            `decode plan: tokens ${seen.get(row)} and ${r} are both in row ${row}; a decode step needs a row of its own for each token (its attention writes that row's K/V): build the meta with decodeMeta`,
          );
        seen.set(row, r);
        // Its LM head reads the residual rows in token order (no last_tokens gather).
        if (input.lastIdx && input.lastIdx[r] !== r)
          throw new ShapeError(
            `decode plan: lastIdx[${r}] must be ${r} (logits of every token in order), got ${input.lastIdx[r]}`,
          );
      }
    }
    const q = this.model.ctx.device.queue;
    if (input.ids) q.writeBuffer(this.ids.buffer, 0, Uint32Array.from(input.ids));
    q.writeBuffer(this.meta.buffer, 0, Uint32Array.from(input.meta));
    if (input.lastIdx) q.writeBuffer(this.lastIdx.buffer, 0, Uint32Array.from(input.lastIdx));
  }

  /** Bytes of GPU memory the plan's own buffers hold. */
  get bytes(): number {
    return this.owned.bytes;
  }

  destroy(): void {
    this.owned.destroy();
  }
}

export interface LoadOptions {
  /**
   * Weight storage: 'f32' (default), 'f16' (packed halves), 'q8' (int8, a scale per output
   * channel) or 'q4' (int4, a scale per 32 inputs of a channel), quantized at load; math stays f32
   * (see docs/API.md).
   */
  dtype?: WeightDType;
  /**
   * The K/V storage of the caches this model creates without CacheOptions.kvDtype (generate's,
   * beam search's and scoring's own caches included): 'f32' (default) or 'f16' (half the bytes,
   * math stays f32; needs n_embd / n_head % 8 == 0). Its kernels are built at load.
   */
  kvDtype?: KvDtype;
  /**
   * Build a session's prompt plans of up to PROMPT_BUCKET_MAX tokens for a power-of-two count (8,
   * 16, 32 or 64), the tokens past the prompt parked, so that later turns of other lengths reuse
   * them instead of building a plan (see promptBucket). Default: the device profile's (on GPUs,
   * where those extra tokens cost next to nothing; off on CPU adapters, where every token costs its
   * share of the compute).
   */
  promptBuckets?: boolean;
}

/** Prompt plans of up to this many tokens are built for their bucket's size (LoadOptions.promptBuckets). */
export const PROMPT_BUCKET_MAX = 64;

/** The token count a prompt plan for T tokens is built for when buckets are on: T itself past PROMPT_BUCKET_MAX. */
export function promptBucket(T: number): number {
  if (T > PROMPT_BUCKET_MAX) return T;
  let b = 8;
  while (b < T) b *= 2;
  return b;
}

export class GPT2Model implements CacheOwner {
  readonly id = nextModelId++;
  readonly tokenizer: Tokenizer = gpt2Tokenizer;
  private destroyedFlag = false;
  private readonly caches = new Set<KVCache>();
  /** Forward plans built so far (diagnostics: takePlan builds one only when its cache kept none that fits). */
  plansBuilt = 0;
  /** LoadOptions.promptBuckets as decided at load (settable: tests run both ways on one model). */
  promptBuckets = false;
  /**
   * LoadOptions.kvDtype: the dtype of caches created without CacheOptions.kvDtype (settable, checked
   * by the next cache: tests run both ways on one model).
   */
  kvDtype: KvDtype = 'f32';
  /** attention + kv_write for f16 caches, built by the first f16 cache (createCache) or at load. */
  private kvF16?: Promise<{ attention: AttentionKernel; kvWrite: KvWriteKernel }>;
  private kvF16Built?: { attention: AttentionKernel; kvWrite: KvWriteKernel };

  constructor(
    readonly ctx: GpuContext,
    readonly config: GPT2Config,
    readonly weights: GPT2Weights,
    readonly kernels: Kernels,
    readonly source: string,
  ) {}

  /** The device profile its kernels were built for. */
  get profile(): DeviceProfile {
    return this.kernels.profile;
  }

  /** Builds every kernel's pipelines once for this model: the ones `profile` names (see kernels/profile.ts). */
  static async buildKernels(
    ctx: GpuContext,
    cfg: GPT2Config,
    profile: DeviceProfile,
    dtype: WeightDType = 'f32',
  ): Promise<Kernels> {
    // The matmul kernel shares the model's layernorm kernel; the others need not wait for it.
    const layernormP = LayerNormKernel.create(ctx, profile.layernormWg);
    const [layernorm, matmul, embedding, attention, kvWrite, kvGather, gatherRows, sampler, beam] = await Promise.all([
      layernormP,
      layernormP.then((layernorm) => MatmulKernel.create(ctx, profile.matmul, layernorm, [dtype])),
      EmbeddingKernel.create(ctx),
      AttentionKernel.create(ctx, { ...profile.attention, headDim: headDim(cfg) }),
      KvWriteKernel.create(ctx),
      KvGatherKernel.create(ctx),
      GatherRowsKernel.create(ctx),
      Sampler.create(ctx, cfg.vocab_size),
      BeamKernel.create(ctx),
    ]);
    return { profile, layernorm, matmul, embedding, attention, kvWrite, kvGather, gatherRows, sampler, beam };
  }

  get destroyed(): boolean {
    return this.destroyedFlag;
  }

  /**
   * Throws DestroyedError once the model is destroyed (`during`: the call that was using it, which
   * stops there), DeviceLostError once its device is gone.
   */
  checkAlive(during?: string): void {
    if (this.destroyedFlag) throw this.destroyedError(during);
    this.ctx.checkAlive();
  }

  /**
   * What a call that was using this model ends with when `e` stopped it: DestroyedError (cause
   * `e`) once the model is destroyed (a read-back failing on the engine's destroyed device, a
   * submit refused), else `e` itself.
   */
  failure(e: unknown, during: string): unknown {
    return this.destroyedFlag && !(e instanceof DestroyedError) ? this.destroyedError(during, e) : e;
  }

  private destroyedError(during?: string, cause?: unknown): DestroyedError {
    return new DestroyedError(
      during
        ? `model #${this.id} (${this.source}) was destroyed while ${during} was using it; it stopped there. Await or abort (AbortSignal) a model's calls before destroying it`
        : `model #${this.id} (${this.source}) was destroyed; load it again to use it`,
      cause === undefined ? undefined : { cause },
    );
  }

  /**
   * Builds (once) the attention and kv_write pipelines for caches of `dtype`: the f32 ones come with
   * the model; the f16 ones (KV_F16 set) are built only when a model uses such a cache.
   */
  async buildKvKernels(dtype: KvDtype): Promise<void> {
    if (dtype === 'f32') return;
    const p = this.profile;
    this.kvF16 ??= Promise.all([
      AttentionKernel.create(this.ctx, {
        ...p.attention,
        headDim: this.config.n_embd / this.config.n_head,
        kvDtype: 'f16',
      }),
      KvWriteKernel.create(this.ctx, 'f16'),
    ]).then(([attention, kvWrite]) => (this.kvF16Built = { attention, kvWrite }));
    try {
      await this.kvF16;
    } catch (e) {
      this.kvF16 = undefined; // a later cache tries again
      throw e;
    }
  }

  /** attention and kv_write for caches of `dtype` (f16: built by buildKvKernels, which createCache runs). */
  kvKernels(dtype: KvDtype): { attention: AttentionKernel; kvWrite: KvWriteKernel } {
    if (dtype === 'f32') return this.kernels;
    if (!this.kvF16Built)
      throw new ShapeError(
        `model #${this.id} has no f16-cache kernels yet: create f16 caches with model.createCache, which builds them`,
      );
    return this.kvF16Built;
  }

  /** A new KV cache (session storage) tied to this model. */
  async createCache(opts: CacheOptions = {}): Promise<KVCache> {
    this.checkAlive();
    checkOptions(opts, CACHE_OPTIONS, 'cache option');
    // Checked before any GPU work; the cache checks it again (the same function).
    const dtype = checkKvDtype(opts.kvDtype, this.kvDtype, this.config);
    await this.buildKvKernels(dtype);
    const c = new KVCache(this, opts);
    await c.ready;
    this.caches.add(c);
    return c;
  }

  /** Bytes of GPU memory a cache of `rows` x `capacity` slots of `kvDtype` (default the model's) holds. */
  cacheBytes(rows: number, capacity: number, kvDtype: KvDtype = this.kvDtype): number {
    return kvCacheBytes(this.config, rows, capacity, kvDtype);
  }

  /** Live caches created by this model (destroyed ones drop out). */
  get liveCaches(): KVCache[] {
    for (const c of this.caches) if (c.destroyed) this.caches.delete(c);
    return [...this.caches];
  }

  /**
   * A plan for T tokens and R logits on `cache`: one the cache kept from an earlier generation
   * (same T, R and kind; the caller then owns it alone), else a new one. Hand it back with
   * keepPlan when done, or destroy it.
   */
  takePlan(cache: KVCache, T: number, R: number, opts: PlanOptions & { bucket?: boolean } = {}): ForwardPlan {
    const decode = opts.decode === true;
    // With promptBuckets, for a plan that will be kept (`bucket`: a session's), a prompt plan of T'
    // tokens, T <= T' <= promptBucket(T), serves T (write parks the rest).
    const most = !decode && opts.bucket === true && this.promptBuckets ? promptBucket(T) : T;
    const fits = (x: { T: number; R: number; decode: boolean }, upTo: number) =>
      x.T >= T && x.T <= upTo && x.R === R && x.decode === decode;
    const kept =
      cache.unstash((x): x is ForwardPlan => x instanceof ForwardPlan && fits(x, T)) ??
      cache.unstash((x): x is ForwardPlan => x instanceof ForwardPlan && fits(x, most));
    if (kept) {
      kept.tag = '';
      return kept;
    }
    return new ForwardPlan(this, cache, most, R, { decode });
  }

  /**
   * Gives a plan back to its cache for later generations (freed with the cache, or earlier when
   * the cache keeps more than PLAN_STASH_COUNT / PLAN_STASH_BYTES). Only for plans whose work
   * finished without an error: a later generation re-writes every input before it submits.
   */
  keepPlan(plan: ForwardPlan): void {
    plan.cache.stash(plan, PLAN_STASH_COUNT, PLAN_STASH_BYTES);
  }

  /** The attention kernel a prompt plan of T tokens of one row runs ('tiled', 'subgroup', 'blocks', 'pairs', ...), as ForwardPlan picks it: for reports. */
  promptAttention(T: number): string {
    // A prompt plan gets a 'blocks' scratch exactly where the profile takes 'blocks' given one (promptScratch).
    return this.kernels.attention.variantFor(T, { scratch: true });
  }

  /** The attention kernel of decode steps ('wide', 'lanes', 'query'): for reports. */
  decodeAttention(): string {
    return this.kernels.attention.decode;
  }

  /** The kernel the per-layer matmuls of a T-token prompt take ('gemm', 'gemv', 'subgroups', 'cols'): for reports. */
  promptMatmul(T: number): string {
    return this.kernels.matmul.kernelFor(T, this.config.n_embd);
  }

  /**
   * A prompt as token ids: a string encoded, an array (or typed array) of ids copied; checkIds
   * checks the values. Anything else (null, a number, an object) is a PromptError naming it.
   */
  promptIds(prompt: unknown, what = 'prompt'): number[] {
    if (typeof prompt === 'string') return this.tokenizer.encode(prompt);
    if (Array.isArray(prompt) || (ArrayBuffer.isView(prompt) && !(prompt instanceof DataView)))
      return Array.from(prompt as ArrayLike<number>);
    const got =
      prompt === null || prompt === undefined
        ? String(prompt)
        : typeof prompt === 'object'
          ? 'an object'
          : typeof prompt === 'function' || typeof prompt === 'symbol'
            ? `a ${typeof prompt}`
            : `a ${typeof prompt} (${String(prompt).slice(0, 40)})`;
    throw new PromptError(
      `${what} must be a string or an array of token ids (numbers in [0, ${this.config.vocab_size - 1}]), got ${got}`,
    );
  }

  /** Checks token ids against the vocabulary. */
  checkIds(ids: readonly number[], what = 'prompt'): void {
    if (ids.length === 0)
      throw new PromptError(
        `${what} is empty: give at least one token (GPT-2 has no BOS by default; use 50256 "<|endoftext|>" to start from nothing)`,
      );
    const V = this.config.vocab_size;
    for (let i = 0; i < ids.length; i++) {
      const t = ids[i]!;
      if (!Number.isInteger(t) || t < 0 || t >= V) {
        throw new PromptError(`${what} token ${i} is ${t}: ids must be integers in [0, ${V - 1}]`);
      }
    }
  }

  /** Records plan dispatches (and optional extra ones) in one compute pass and submits. */
  submit(dispatches: readonly Dispatch[], after?: (enc: GPUCommandEncoder) => void): void {
    this.checkAlive('a call'); // never on destroyed weights
    const enc = this.ctx.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encodeDispatches(pass, dispatches);
    pass.end();
    after?.(enc);
    this.ctx.stats.dispatches += dispatches.length;
    this.ctx.submit([enc.finish()]);
  }

  /**
   * Runs a prompt through the model from an empty cache and returns logits read back to the CPU
   * (a debug/verification path): the last position's [V], or every position's [T, V]. Positions
   * whose logits one storage binding cannot hold together (667 of gpt2's vocabulary in 128 MiB)
   * are computed in parts, the forward pass run once per part.
   */
  async logits(
    ids: readonly number[],
    opts: { allPositions?: boolean } = {},
  ): Promise<{ shape: number[]; data: Float32Array }> {
    this.checkAlive();
    checkOptions(opts, ['allPositions'], 'logits option');
    if (opts.allPositions !== undefined && typeof opts.allPositions !== 'boolean')
      throw new InvalidOptionError(`allPositions must be a boolean, got ${String(opts.allPositions)}`);
    this.checkIds(ids);
    const T = ids.length;
    if (T > this.config.n_positions) {
      throw new PromptError(
        `prompt has ${T} tokens, more than the context window n_positions = ${this.config.n_positions}`,
      );
    }
    const V = this.config.vocab_size;
    const positions = opts.allPositions ? T : 1;
    const R = Math.min(positions, rowsThatFit(this.ctx, V * 4)); // positions per part
    checkVocabRows(this.ctx, R, V, 'logits', 'positions');
    const cache = await this.createCache({ capacity: Math.max(2, T) });
    const errors = new CallErrors(this.ctx);
    let plan: ForwardPlan | undefined;
    try {
      plan = errors.run(() => new ForwardPlan(this, cache, T, R));
      const data = new Float32Array(positions * V);
      for (let from = 0; from < positions; from += R) {
        const n = Math.min(R, positions - from);
        const at = (i: number) => (opts.allPositions ? Math.min(from + i, T - 1) : T - 1);
        errors.run(() => {
          plan!.write({ ids, meta: rowMeta(0, 0, T), lastIdx: Uint32Array.from({ length: R }, (_, i) => at(i)) });
          this.submit(plan!.dispatches);
        });
        // (An async call's GPU work up to its first await runs inside `run` too.)
        const part = await errors.run(() => this.ctx.readBuffer(plan!.logits.buffer, 0, n * V * 4));
        data.set(new Float32Array(part), from * V);
        errors.throwIfCaught();
      }
      await errors.check();
      return { shape: opts.allPositions ? [T, V] : [V], data };
    } finally {
      plan?.destroy();
      cache.destroy();
    }
  }

  /** Frees the weights and every cache this model created. */
  destroy(): void {
    if (this.destroyedFlag) return;
    for (const c of this.caches) {
      if (!c.destroyed) {
        c.release();
        c.destroy();
      }
    }
    this.caches.clear();
    this.weights.destroy();
    this.destroyedFlag = true;
  }
}
