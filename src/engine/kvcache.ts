/**
 * GPU-resident KV cache: K and V of every layer for `rows` sequences, allocated once at creation.
 *
 *   k[l], v[l]: [rows, capacity, n_embd] f32, or f16 (kvDtype: IEEE halves packed two per u32
 *               word, half the bytes; the kernels unpack them to f32), one buffer each per layer
 *
 * A token at absolute position `pos` of row r keeps its K/V at slot `pos % capacity` (a ring), so
 * nothing is ever reallocated, moved or read back per step. The engine never lets a row's position
 * reach the window (min(n_positions, capacity)): before that it shifts (keeps the most recent
 * `keep` tokens and re-encodes them from position 0) or throws, per the cache's `onOverflow`.
 *
 * CPU-side bookkeeping per row, kept by the cache's own methods (append, commit, shift, reset):
 * `tokens` (the row's context: needed to re-encode on a shift and for penalties of a continued
 * session) and `lengths` (how many of them, from the start, have their K/V in the cache). The
 * invariant 0 <= lengths[r] <= tokens[r].length always holds; tokens[r][lengths[r]..] are pending:
 * the next step that writes the row feeds them (after a generation, its newest sampled token).
 */
import { optionNames } from '../sampling/names.js';
import { CacheMisuseError, InvalidOptionError, OutOfMemoryError, ShapeError } from '../errors.js';
import type { GpuTensor } from '../gpu/common.js';
import type { GpuContext } from '../gpu/device.js';
import { KV_DTYPES, type KvDtype } from '../kernels/kvcache.js';

export type { KvDtype } from '../kernels/kvcache.js';
export { KV_DTYPES } from '../kernels/kvcache.js';

/** Bytes of GPU memory a cache of `rows` x `capacity` slots holds: K and V of every layer. */
export function kvCacheBytes(
  config: { n_layer: number; n_embd: number },
  rows: number,
  capacity: number,
  dtype: KvDtype,
): number {
  return 2 * config.n_layer * rows * capacity * config.n_embd * (dtype === 'f16' ? 2 : 4);
}

export type OverflowPolicy = 'shift' | 'error';

export interface CacheOptions {
  /** Slots per row; default and maximum the model's n_positions. */
  capacity?: number;
  /** Sequences held (batched sampling, beams, a group of sessions). Default 1. */
  rows?: number;
  /** What to do when a row would pass the window: 'shift' (default) or 'error'. */
  onOverflow?: OverflowPolicy;
  /** Tokens kept by a shift; default half the window. */
  keep?: number;
  /**
   * What the cache stores K and V as: 'f32', or 'f16' (half the bytes; needs a head size that is a
   * multiple of 8). Default: the model's (LoadOptions.kvDtype, 'f32' unless set at load).
   */
  kvDtype?: KvDtype;
}

export const CACHE_OPTIONS = optionNames<CacheOptions>({
  capacity: true,
  rows: true,
  onOverflow: true,
  keep: true,
  kvDtype: true,
});

/** The part of a model a cache needs to know (avoids an import cycle with model.ts). */
export interface CacheOwner {
  readonly ctx: GpuContext;
  readonly config: { n_layer: number; n_embd: number; n_head: number; n_positions: number };
  readonly id: number;
  /** The dtype of caches created without CacheOptions.kvDtype. */
  readonly kvDtype: KvDtype;
}

/**
 * The cache dtype `given` names, else `fallback`; throws InvalidOptionError listing the valid values
 * for anything else, or (given the model's config) for 'f16' at a head size the kernels cannot pack
 * (n_embd / n_head % 8 != 0).
 */
export function checkKvDtype(
  given: unknown,
  fallback: KvDtype,
  config?: { n_embd: number; n_head: number },
  what = 'kvDtype',
): KvDtype {
  const d = given ?? fallback;
  if (!KV_DTYPES.includes(d as KvDtype))
    throw new InvalidOptionError(
      `${what} must be one of ${KV_DTYPES.map((x) => `'${x}'`).join(', ')}, got ${JSON.stringify(d)}`,
    );
  const D = config ? config.n_embd / config.n_head : 8; // no config: the value alone is checked
  if (d === 'f16' && !(Number.isInteger(D) && D % 8 === 0))
    throw new InvalidOptionError(
      `${what} 'f16' needs a head size (n_embd / n_head) that is a multiple of 8 (f16 pairs in 16-byte words per head); this model's is ${D}: use 'f32'`,
    );
  return d as KvDtype;
}

let nextCacheId = 1;

/**
 * GPU resources made for this cache that it keeps between generations and frees with itself: the
 * forward plans of finished generations (GPT2Model.takePlan / keepPlan), whose bind groups name the
 * cache's buffers, so they can serve no other cache.
 */
export interface Stashable {
  readonly bytes: number;
  destroy(): void;
}

export class KVCache {
  readonly id = nextCacheId++;
  readonly rows: number;
  readonly capacity: number;
  /** min(n_positions, capacity): positions 0..window-1 are usable. */
  readonly window: number;
  readonly onOverflow: OverflowPolicy;
  readonly keep: number;
  /** What K and V are stored as (CacheOptions.kvDtype). */
  readonly kvDtype: KvDtype;
  /** Per layer: [rows, capacity, n_embd] of kvDtype (f16: n_embd / 2 u32 words per slot). */
  readonly k: GPUBuffer[] = [];
  readonly v: GPUBuffer[] = [];
  /** Per row: tokens of the context whose K/V the cache holds (a prefix of `tokens`). */
  private readonly held: number[];
  /** Per row: the context's tokens. */
  private readonly context: number[][];
  private destroyedFlag = false;
  /** Rows a step or generation is using now (generations on disjoint rows may run at once). */
  private readonly busyRows = new Set<number>();
  /** Idle resources kept for the next generations, least recently stashed first. */
  private readonly stashed: Stashable[] = [];

  constructor(
    readonly owner: CacheOwner,
    opts: CacheOptions = {},
  ) {
    const { n_layer, n_embd, n_positions } = owner.config;
    const rows = opts.rows ?? 1;
    const capacity = opts.capacity ?? n_positions;
    this.kvDtype = checkKvDtype(opts.kvDtype, owner.kvDtype, owner.config);
    if (!Number.isInteger(rows) || rows < 1 || rows > 4096) {
      throw new InvalidOptionError(`cache rows must be an integer in [1, 4096], got ${rows}`);
    }
    if (!Number.isInteger(capacity) || capacity < 2) {
      throw new InvalidOptionError(`cache capacity must be an integer >= 2, got ${capacity}`);
    }
    this.rows = rows;
    this.capacity = capacity;
    this.window = Math.min(capacity, n_positions);
    this.onOverflow = opts.onOverflow ?? 'shift';
    if (this.onOverflow !== 'shift' && this.onOverflow !== 'error') {
      throw new InvalidOptionError(`onOverflow must be 'shift' or 'error', got ${String(opts.onOverflow)}`);
    }
    this.keep = opts.keep ?? Math.floor(this.window / 2);
    if (!Number.isInteger(this.keep) || this.keep < 1 || this.keep >= this.window) {
      throw new InvalidOptionError(
        `keep must be an integer in [1, ${this.window - 1}] (the window is ${this.window}), got ${opts.keep}`,
      );
    }
    const ctx = owner.ctx;
    const elemBytes = this.kvDtype === 'f16' ? 2 : 4;
    // f16: n_embd % 8 == 0 (checkKvDtype), so a slot is whole 16-byte words, as the kernels read them
    const bytes = kvCacheBytes({ n_layer: 1, n_embd }, rows, capacity, this.kvDtype) / 2; // one layer's K
    const maxBind = ctx.limits.maxStorageBufferBindingSize;
    if (bytes > maxBind) {
      const fit = Math.floor(maxBind / (capacity * n_embd * elemBytes));
      throw new OutOfMemoryError(
        `a KV cache layer of ${rows} rows x ${capacity} slots x ${n_embd} ${this.kvDtype} is ${bytes} bytes, over the adapter's ` +
          `maxStorageBufferBindingSize ${maxBind}; use at most ${fit} rows at this capacity, a smaller capacity` +
          (this.kvDtype === 'f32' ? `, or kvDtype 'f16' (half the bytes)` : ''),
      );
    }
    ctx.checkAlive();
    ctx.device.pushErrorScope('out-of-memory');
    try {
      for (let l = 0; l < n_layer; l++) {
        const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
        this.k.push(ctx.createBuffer(`kv${this.id}.k${l}`, bytes, usage));
        this.v.push(ctx.createBuffer(`kv${this.id}.v${l}`, bytes, usage));
      }
    } catch (e) {
      void ctx.device.popErrorScope();
      this.freeBuffers();
      throw e;
    }
    this.held = new Array<number>(rows).fill(0);
    this.context = Array.from({ length: rows }, () => []);
    // The out-of-memory scope resolves asynchronously; `ready` reports it.
    this.ready = ctx.device.popErrorScope().then((err) => {
      if (err) {
        this.freeBuffers();
        this.destroyedFlag = true;
        throw new OutOfMemoryError(
          `out of GPU memory allocating a KV cache of ${2 * n_layer} x ${bytes} bytes: ${err.message}`,
        );
      }
    });
    this.ready.catch(() => undefined);
  }

  /** Resolves once the allocation is known to have succeeded; rejects with OutOfMemoryError. */
  readonly ready: Promise<void>;

  /** Per row: how many tokens of its context (from the start) have their K/V in the cache. */
  get lengths(): readonly number[] {
    return this.held;
  }

  /** Per row: the context's tokens (the first lengths[r] held, the rest pending). */
  get tokens(): readonly (readonly number[])[] {
    return this.context;
  }

  /** Row r's context tokens whose K/V the cache does not hold yet: what its next step must feed. */
  pending(r: number): readonly number[] {
    return this.context[r]!.slice(this.held[r]);
  }

  /** Appends `ids` to row r's context, pending until a step feeds them (commit). */
  append(r: number, ids: readonly number[]): void {
    const row = this.context[r]!;
    for (const t of ids) row.push(t); // no spread: a long prompt would pass the engine's argument limit
  }

  /**
   * Counts `count` more of row r's pending tokens (default all) as held: a submitted step writes
   * their K/V. Throws ShapeError past the pending ones (the invariant lengths <= tokens).
   */
  commit(r: number, count = this.context[r]!.length - this.held[r]!): void {
    const pending = this.context[r]!.length - this.held[r]!;
    if (!Number.isInteger(count) || count < 0 || count > pending)
      throw new ShapeError(`KV cache #${this.id}: commit of ${count} tokens of row ${r}, which has ${pending} pending`);
    this.held[r]! += count;
  }

  /**
   * Context shift of row r: keeps its most recent `keep` tokens, none held (they are re-encoded
   * from position 0, then committed). Returns them.
   */
  shift(r: number): readonly number[] {
    const kept = this.context[r]!.slice(-this.keep);
    this.context[r] = kept;
    this.held[r] = 0;
    return kept;
  }

  /** Bytes of GPU memory this cache holds. */
  get bytes(): number {
    return this.k.reduce((s, b) => s + b.size, 0) + this.v.reduce((s, b) => s + b.size, 0);
  }

  /** Bytes of GPU memory held by idle plans kept for the next generations (not in `bytes`). */
  get stashedBytes(): number {
    return this.stashed.reduce((s, x) => s + x.bytes, 0);
  }

  /** All the GPU memory this cache holds: `bytes` plus `stashedBytes` (what a session reports). */
  get heldBytes(): number {
    return this.bytes + this.stashedBytes;
  }

  /** How many idle resources are stashed. */
  get stashedCount(): number {
    return this.stashed.length;
  }

  /**
   * Keeps `item` for a later unstash, then frees the least recently stashed items while more
   * than `maxItems` or more than `maxBytes` are kept (`item` itself too, if alone it is larger).
   * A destroyed cache frees it at once.
   */
  stash(item: Stashable, maxItems: number, maxBytes: number): void {
    if (this.destroyedFlag) {
      item.destroy();
      return;
    }
    this.stashed.push(item);
    while (this.stashed.length > maxItems || (this.stashed.length > 0 && this.stashedBytes > maxBytes))
      this.stashed.shift()!.destroy();
  }

  /** Removes and returns the most recently stashed item `match` accepts (undefined if none). */
  unstash<T extends Stashable>(match: (x: Stashable) => x is T): T | undefined {
    for (let i = this.stashed.length - 1; i >= 0; i--) {
      const x = this.stashed[i]!;
      if (match(x)) {
        this.stashed.splice(i, 1);
        return x;
      }
    }
    return undefined;
  }

  get destroyed(): boolean {
    return this.destroyedFlag;
  }

  /** Whether any row is in use by a step or generation. */
  get busy(): boolean {
    return this.busyRows.size > 0;
  }

  /** K or V of layer l as a tensor view [rows, capacity, n_embd] of kvDtype. */
  kTensor(l: number): GpuTensor {
    const shape = [this.rows, this.capacity, this.owner.config.n_embd];
    return { buffer: this.k[l]!, offset: 0, shape, dtype: this.kvDtype };
  }
  vTensor(l: number): GpuTensor {
    const shape = [this.rows, this.capacity, this.owner.config.n_embd];
    return { buffer: this.v[l]!, offset: 0, shape, dtype: this.kvDtype };
  }

  /** Throws CacheMisuseError unless this cache is alive and belongs to `owner`. */
  checkUsable(owner: CacheOwner): void {
    if (this.destroyedFlag)
      throw new CacheMisuseError(
        `KV cache #${this.id} was destroyed (session.destroy(), group.destroy() or cache.destroy()); create a new session, group or cache`,
      );
    if (this.owner !== owner) {
      throw new CacheMisuseError(
        `KV cache #${this.id} belongs to model #${this.owner.id}, not to model #${owner.id}; a cache only works with the model that created it`,
      );
    }
  }

  /**
   * Marks `rows` (default: every row) busy for the duration of a step/generation; throws
   * CacheMisuseError if one of them already is. Generations on disjoint rows may run at once.
   */
  acquire(owner: CacheOwner, rows?: readonly number[]): void {
    this.checkUsable(owner);
    this.checkFree(rows);
    for (const r of rows ?? this.held.keys()) this.busyRows.add(r);
  }

  /** Throws CacheMisuseError if one of `rows` (default: any row) is busy, or `extra` ones are (rows about to be used). */
  checkFree(rows?: readonly number[], extra: readonly number[] = []): void {
    const want = rows ?? [...this.held.keys()];
    const taken = want.filter((r) => this.busyRows.has(r) || extra.includes(r));
    if (taken.length) {
      const which = rows === undefined ? '' : ` (row${taken.length > 1 ? 's' : ''} ${taken.join(', ')})`;
      throw new CacheMisuseError(
        `KV cache #${this.id} is busy${which} with another step or generation; await it first, or use one cache (or one cache row: cacheRows) per concurrent generation`,
      );
    }
  }

  /** Ends what acquire(owner, rows) began (default: every row). */
  release(rows?: readonly number[]): void {
    if (rows === undefined) this.busyRows.clear();
    else for (const r of rows) this.busyRows.delete(r);
  }

  /**
   * Forgets the contents of one row (or all rows). With `context`, the row's context becomes those
   * tokens, none held (a continued session feeds them first).
   */
  reset(row?: number, context: readonly number[] = []): void {
    if (this.destroyedFlag) throw new CacheMisuseError(`KV cache #${this.id} was destroyed; there is nothing to reset`);
    if (row !== undefined && !(Number.isInteger(row) && row >= 0 && row < this.rows))
      throw new InvalidOptionError(
        `reset: row must be an integer in [0, ${this.rows - 1}] (the cache has ${this.rows} rows), got ${String(row)}`,
      );
    const rows = row === undefined ? [...this.held.keys()] : [row];
    for (const r of rows) {
      this.held[r] = 0;
      this.context[r] = [...context];
    }
  }

  private freeBuffers(): void {
    for (const b of [...this.k, ...this.v]) this.owner.ctx.destroyBuffer(b);
    this.k.length = 0;
    this.v.length = 0;
  }

  /** Frees the GPU memory. Using the cache afterwards throws CacheMisuseError. */
  destroy(): void {
    if (this.destroyedFlag) return;
    if (this.busy)
      throw new CacheMisuseError(`KV cache #${this.id} is busy; cancel or await its generation before destroying it`);
    this.destroyedFlag = true;
    for (const x of this.stashed.splice(0)) x.destroy();
    this.freeBuffers();
  }
}
