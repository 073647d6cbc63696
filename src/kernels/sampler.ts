/**
 * The GPU sampler (shaders/sampling.wgsl): logit processors, top-k / top-p / min-p and a
 * Philox-seeded Gumbel-max draw, one workgroup per sequence row. Everything stays on the GPU; the
 * CPU reads back only the chosen ids. Per-row counts (for the penalties), step counters and EOS
 * latches live on the GPU too, so steps can be queued ahead without any CPU write per step.
 */
import type { GpuContext } from '../gpu/device.js';
import { CallErrors } from '../gpu/call-errors.js';
import { checkVocabRows } from '../gpu/limits.js';
import { InvalidOptionError, ShapeError } from '../errors.js';
import {
  binding,
  Dispatch,
  DType,
  encodeDispatches,
  expectTensor,
  f32bits,
  GpuTensor,
  Owned,
  tensorBytes,
  UniformSlice,
} from '../gpu/common.js';

/**
 * Sampling options with every default filled in (validated by src/sampling/options.ts): the
 * parameters of one sampler row. seed stays optional: it is given per sequence.
 */
export interface NormalizedSampling {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  minTokensToKeep: number;
  freqPenalty: number;
  presencePenalty: number;
  repetitionPenalty: number;
  /** Sorted by id. */
  logitBias: Array<[number, number]>;
  /** 0 = off. The host computes the bans (src/sampling/bans.ts); the sampler applies its masks. */
  noRepeatNgramSize: number;
  badWordsIds: number[][];
  suppressTokens: number[];
  /** The row's untilMin ids (RowBans) are banned while it has drawn fewer tokens than this. */
  minNewTokens: number;
  seed?: number;
}

/** The 64-bit Philox key of a seed: [low 32 bits, high 32 bits]. */
export function seedWords(seed: number): [number, number] {
  return [(seed % 2 ** 32) >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
}

const NONE = 0xffffffff;
const WG = 256;
const PARAM_WORDS = 16; // struct RowParams
const STATE_WORDS = 4; // struct RowState
const CUT_WORDS = 8; // struct Cut
// STORAGE | COPY_DST | COPY_SRC as numbers: the GPUBufferUsage global may not exist at import time in Node.
const STORAGE = 0x80 | 0x8 | 0x4;

/** GPU state of `rows` sequences; its buffers belong to the `Owned` given to createState. */
export interface SamplerState {
  readonly rows: number;
  readonly vocab: number;
  /** RowParams [rows] (storage). */
  readonly params: GPUBuffer;
  /** Token counts of prompt + output [rows, V] u32. */
  readonly counts: GpuTensor;
  /** Dense logit_bias rows [rows with a bias, V] f32 (a 4-byte dummy when no row has one). */
  readonly bias: GPUBuffer;
  /** Processed logits z [rows, V] f32 (scratch, readable for tests). */
  readonly work: GpuTensor;
  /** RowState [rows]: step counter and EOS latch. */
  readonly rowState: GPUBuffer;
  /** Cut [rows]: the kept set found by the last select. */
  readonly cuts: GPUBuffer;
  /** Ban masks [rows, 2, ceil(V / 32)] u32: per row the always-mask and the until-min mask (RowBans). */
  readonly bans: GPUBuffer;
  readonly opts: readonly NormalizedSampling[];
  readonly seeds: readonly number[];
  readonly eosId: number;
  readonly stopAtEos: boolean;
}

export interface SamplerInit {
  /** One seed per row (use deriveSeed(seed, i) for a batch). */
  seeds: number[];
  /** EOS token id (-1: none). */
  eosId: number;
  /** Latch a row as finished once it chose EOS. */
  stopAtEos: boolean;
  /** Per row: its hard bans (default none). */
  bans?: RowBans[];
}

export interface SamplerIO {
  /** [rows, V] f32. */
  logits: GpuTensor;
  /** [rows] u32 or i32: the chosen id of each row (may be a view into the model's ids buffer). */
  outIds: GpuTensor;
  /** [rows, V] f32: softmax over the kept tokens, zeros elsewhere (one-hot for greedy / finished). */
  probsOut?: GpuTensor;
  /**
   * [rows] f32: the chosen token's log-probability under the distribution it was drawn from (the
   * log-softmax of the processed logits over the kept tokens; greedy rows: over every token).
   */
  logprobOut?: GpuTensor;
  /** Update counts, step counters and EOS latches (default true). */
  update?: boolean;
}

/**
 * A row's hard bans (src/sampling/bans.ts computes them): ids never drawn, ids not drawn while the
 * row has drawn fewer than minNewTokens (its end ids: EOS, stop token ids), and whether the host
 * rewrites the first set between steps (setBans).
 */
export interface RowBans {
  always: readonly number[];
  untilMin: readonly number[];
  dynamic?: boolean;
}

const NO_BANS: RowBans = { always: [], untilMin: [] };

/** Words of one ban mask: a bit per vocab id. */
function maskWords(vocab: number): number {
  return Math.ceil(vocab / 32);
}

/** The bit mask of `ids` ([W] u32). */
function maskOf(ids: readonly number[], vocab: number): Uint32Array<ArrayBuffer> {
  const m = new Uint32Array(maskWords(vocab));
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocab)
      throw new InvalidOptionError(`banned id ${id} is invalid: must be in [0, ${vocab})`);
    m[id >>> 5]! |= 1 << (id & 31);
  }
  return m;
}

/** RowParams.ban_flags: bit 0 the always-mask is read, bit 1 the until-min mask is. */
function banFlags(o: NormalizedSampling, b: RowBans): number {
  return (b.always.length > 0 || b.dynamic ? 1 : 0) | (o.minNewTokens > 0 && b.untilMin.length > 0 ? 2 : 0);
}

/** The row's RowParams words. */
function rowParams(
  o: NormalizedSampling,
  vocab: number,
  seed: number,
  eosId: number,
  stopAtEos: boolean,
  biasRow: number,
  bans: RowBans,
): number[] {
  const minKeep = Math.min(o.minTokensToKeep, vocab);
  const k = o.topK > 0 ? Math.max(o.topK, minKeep) : 0;
  const topP = o.topP > 0 && o.topP < 1 ? o.topP : 1;
  const [lo, hi] = seedWords(seed);
  return [
    f32bits(o.temperature),
    k >= vocab ? 0 : k,
    f32bits(topP),
    f32bits(o.minP),
    minKeep,
    f32bits(o.freqPenalty),
    f32bits(o.presencePenalty),
    f32bits(o.repetitionPenalty),
    lo,
    hi,
    eosId < 0 ? NONE : eosId,
    stopAtEos ? 1 : 0,
    biasRow,
    banFlags(o, bans),
    Math.min(o.minNewTokens, NONE),
    0,
  ];
}

/**
 * A binding that starts at an offset aligned to minStorageBufferOffsetAlignment, and the element
 * offset of the tensor inside it (views into bigger buffers need not be aligned).
 */
function alignedBinding(ctx: GpuContext, t: GpuTensor): { resource: GPUBufferBinding; elemOffset: number } {
  const align = ctx.limits.minStorageBufferOffsetAlignment;
  const start = Math.floor(t.offset / align) * align;
  if ((t.offset - start) % 4 !== 0) throw new ShapeError(`tensor offset ${t.offset} is not a multiple of 4 bytes`);
  const size = Math.ceil((t.offset - start + tensorBytes(t.shape, t.dtype)) / 4) * 4;
  return { resource: { buffer: t.buffer, offset: start, size }, elemOffset: (t.offset - start) / 4 };
}

type Entry = 'select_row' | 'draw_row' | 'add_counts' | 'compact_row' | 'draw_many';

export class Sampler {
  private constructor(
    readonly ctx: GpuContext,
    readonly vocab: number,
    private readonly pipes: Record<Entry, GPUComputePipeline>,
  ) {}

  static async create(ctx: GpuContext, vocab: number): Promise<Sampler> {
    if (!Number.isInteger(vocab) || vocab < 1)
      throw new ShapeError(`Sampler: vocab must be an integer >= 1, got ${vocab}`);
    const entries: Entry[] = ['select_row', 'draw_row', 'add_counts', 'compact_row', 'draw_many'];
    const built = await Promise.all(entries.map((e) => ctx.pipeline('sampling', e)));
    const pipes = Object.fromEntries(entries.map((e, i) => [e, built[i]!])) as Record<Entry, GPUComputePipeline>;
    return new Sampler(ctx, vocab, pipes);
  }

  /**
   * GPU state for `rows` sequences: per-row params, counts [rows, V] u32 (zero), step counters,
   * EOS latches. `opts` is shared by every row or given per row.
   */
  createState(
    owner: Owned,
    rows: number,
    opts: NormalizedSampling | NormalizedSampling[],
    init: SamplerInit,
  ): SamplerState {
    const V = this.vocab;
    if (!Number.isInteger(rows) || rows < 1)
      throw new ShapeError(`Sampler.createState: rows must be an integer >= 1, got ${rows}`);
    const per = Array.isArray(opts) ? [...opts] : new Array<NormalizedSampling>(rows).fill(opts);
    if (per.length !== rows) throw new ShapeError(`Sampler.createState: ${per.length} option sets for ${rows} rows`);
    if (init.seeds.length !== rows)
      throw new ShapeError(`Sampler.createState: ${init.seeds.length} seeds for ${rows} rows`);
    for (const s of init.seeds) {
      if (!Number.isInteger(s) || s < 0 || s >= 2 ** 53)
        throw new InvalidOptionError(`seed ${s} is invalid: must be an integer in [0, 2^53)`);
    }
    if (!Number.isInteger(init.eosId) || init.eosId >= V || init.eosId < -1) {
      throw new InvalidOptionError(`eosId ${init.eosId} is invalid: must be -1 (none) or an id in [0, ${V})`);
    }
    if (init.bans !== undefined && init.bans.length !== rows)
      throw new ShapeError(`Sampler.createState: ${init.bans.length} ban sets for ${rows} rows`);
    // Bias rows [rows, V] only when some row has a logit_bias (row r uses bias row r).
    const anyBias = per.some((o) => o.logitBias.length > 0);
    const params = new Uint32Array(rows * PARAM_WORDS);
    const bias = new Float32Array(anyBias ? rows * V : 1);
    // Ban masks for every row (zero: nothing banned), so that any row may take bans later (setRow).
    const W = maskWords(V);
    const bans = new Uint32Array(rows * 2 * W);
    per.forEach((o, r) => {
      for (const [id, val] of o.logitBias) {
        if (id >= V) throw new InvalidOptionError(`logitBias id ${id} is invalid: must be in [0, ${V})`);
        bias[r * V + id] = val;
      }
      const b = init.bans?.[r] ?? NO_BANS;
      bans.set(maskOf(b.always, V), r * 2 * W);
      bans.set(maskOf(b.untilMin, V), (r * 2 + 1) * W);
      params.set(
        rowParams(o, V, init.seeds[r]!, init.eosId, init.stopAtEos, o.logitBias.length ? r : NONE, b),
        r * PARAM_WORDS,
      );
    });
    const c = this.ctx;
    const mk = (label: string, data: ArrayBufferView) => owner.adopt(c.createBufferWithData(label, data, STORAGE));
    return {
      rows,
      vocab: V,
      params: mk('sampler.params', params),
      counts: {
        buffer: owner.buffer('sampler.counts', rows * V * 4, STORAGE),
        offset: 0,
        shape: [rows, V],
        dtype: 'u32',
      },
      bias: mk('sampler.bias', bias),
      work: { buffer: owner.buffer('sampler.work', rows * V * 4, STORAGE), offset: 0, shape: [rows, V], dtype: 'f32' },
      rowState: owner.buffer('sampler.state', rows * STATE_WORDS * 4, STORAGE),
      cuts: owner.buffer('sampler.cuts', rows * CUT_WORDS * 4, STORAGE),
      bans: mk('sampler.bans', bans),
      opts: per,
      seeds: [...init.seeds],
      eosId: init.eosId,
      stopAtEos: init.stopAtEos,
    };
  }

  /** Adds tokens (a prompt) to the counts of `row` on the GPU: one small write and dispatch. */
  addCounts(state: SamplerState, row: number, ids: ArrayLike<number>): void {
    this.checkRow(state, row, 'addCounts');
    if (ids.length === 0) return;
    const words = new Uint32Array(ids.length + 2);
    words[0] = row;
    words[1] = ids.length;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= state.vocab) {
        throw new ShapeError(`addCounts: token ${i} is ${id}; ids must be integers in [0, ${state.vocab})`);
      }
      words[i + 2] = id;
    }
    const tmp = new Owned(this.ctx);
    try {
      const aux = tmp.adopt(this.ctx.createBufferWithData('sampler.prompt', words, STORAGE));
      const g = this.globals(tmp, state.rows, 0, 0, 0, 0);
      const bg = this.group('add_counts', { 0: g, 4: binding(state.counts), 10: { buffer: aux } });
      this.submit([
        {
          family: 'sampling',
          label: 'sampler.add_counts',
          pipeline: this.pipes.add_counts,
          bindGroup: bg,
          workgroups: [1, 1, 1],
        },
      ]);
    } finally {
      tmp.destroy(); // destroy waits for the submitted work in WebGPU's model
    }
  }

  /**
   * Gives `row` new options and a new seed (for reuse by another sequence; call resetRow too).
   * A logit_bias needs a state created with a bias on some row (the bias rows exist then).
   */
  setRow(state: SamplerState, row: number, opts: NormalizedSampling, seed: number, bans: RowBans = NO_BANS): void {
    this.checkRow(state, row, 'setRow');
    const V = state.vocab;
    if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 53)
      throw new InvalidOptionError(`seed ${seed} is invalid: must be an integer in [0, 2^53)`);
    const hasBiasRows = state.bias.size >= state.rows * V * 4;
    if (opts.logitBias.length && !hasBiasRows) {
      throw new InvalidOptionError(
        'setRow: logitBias on a state created without any logit_bias; create the state with a logitBias on at least one row',
      );
    }
    const q = this.ctx.device.queue;
    if (hasBiasRows) {
      const b = new Float32Array(V);
      for (const [id, val] of opts.logitBias) b[id] = val;
      q.writeBuffer(state.bias, row * V * 4, b);
    }
    const W = maskWords(V);
    q.writeBuffer(state.bans, row * 2 * W * 4, maskOf(bans.always, V));
    q.writeBuffer(state.bans, (row * 2 + 1) * W * 4, maskOf(bans.untilMin, V));
    const words = rowParams(opts, V, seed, state.eosId, state.stopAtEos, opts.logitBias.length ? row : NONE, bans);
    q.writeBuffer(state.params, row * PARAM_WORDS * 4, new Uint32Array(words));
    (state.opts as NormalizedSampling[])[row] = opts;
    (state.seeds as number[])[row] = seed;
  }

  /**
   * Replaces the ids `row` may never draw (its always-mask) from the next submitted step on: the
   * host's per-step bans (n-grams, bad words) together with the row's static ones. The row must
   * have been given dynamic bans (RowBans.dynamic), which makes the sampler read its mask.
   */
  setBans(state: SamplerState, row: number, ids: readonly number[]): void {
    this.checkRow(state, row, 'setBans');
    const W = maskWords(state.vocab);
    this.ctx.device.queue.writeBuffer(state.bans, row * 2 * W * 4, maskOf(ids, state.vocab));
  }

  /**
   * Sets the EOS latch of `row`: from the next submitted step on it draws EOS without reading its
   * logits (a sequence parked in a decode step, whose logits are NaN; resetRow clears the latch).
   */
  park(state: SamplerState, row: number): void {
    this.checkRow(state, row, 'park');
    this.ctx.device.queue.writeBuffer(state.rowState, (row * STATE_WORDS + 1) * 4, Uint32Array.of(1)); // RowState.finished
  }

  /** Zeroes the counts, step counter and EOS latch of `row` (for reuse by a new sequence). */
  resetRow(state: SamplerState, row: number): void {
    this.checkRow(state, row, 'resetRow');
    const enc = this.ctx.device.createCommandEncoder({ label: 'sampler.reset' });
    enc.clearBuffer(state.counts.buffer, row * state.vocab * 4, state.vocab * 4);
    enc.clearBuffer(state.rowState, row * STATE_WORDS * 4, STATE_WORDS * 4);
    this.ctx.submit([enc.finish()]);
  }

  /**
   * The two dispatches of one sampling step: select (processed logits and kept set per row) and
   * draw (chosen id per row into outIds, probsOut if given, counts / step / EOS latch updates).
   */
  bind(owner: Owned, state: SamplerState, io: SamplerIO, label = 'sampler'): Dispatch[] {
    const { rows, vocab: V } = state;
    expectTensor(`${label} logits`, io.logits, [rows, V], ['f32']);
    expectTensor(`${label} outIds`, io.outIds, [rows], ['u32', 'i32']);
    if (io.probsOut) expectTensor(`${label} probsOut`, io.probsOut, [rows, V], ['f32']);
    if (io.logprobOut) expectTensor(`${label} logprobOut`, io.logprobOut, [rows], ['f32']);
    const lg = alignedBinding(this.ctx, io.logits);
    const out = alignedBinding(this.ctx, io.outIds);
    const flags = (io.probsOut ? 1 : 0) | (io.update === false ? 0 : 2) | (io.logprobOut ? 4 : 0);
    const { gx, gy } = this.grid(label, rows);
    const g = this.globals(owner, rows, lg.elemOffset, out.elemOffset, flags, 0, gx);
    // What is not asked for is bound to two disjoint words of one small buffer (writable bindings
    // may not alias).
    const align = this.ctx.limits.minStorageBufferOffsetAlignment;
    const spare = io.probsOut && io.logprobOut ? undefined : owner.buffer(`${label}.unused`, align + 4, STORAGE);
    const probs = io.probsOut ? binding(io.probsOut) : { buffer: spare!, offset: 0, size: 4 };
    const lp = io.logprobOut ? binding(io.logprobOut) : { buffer: spare!, offset: align, size: 4 };
    const common = {
      0: g,
      2: { buffer: state.params },
      4: binding(state.counts),
      5: binding(state.work),
      6: { buffer: state.rowState },
      7: { buffer: state.cuts },
    };
    const sel = this.group('select_row', {
      ...common,
      1: lg.resource,
      3: { buffer: state.bias },
      12: { buffer: state.bans },
    });
    const draw = this.group('draw_row', { ...common, 8: out.resource, 9: probs, 13: lp });
    return [
      {
        family: 'sampling',
        label: `${label}.select`,
        pipeline: this.pipes.select_row,
        bindGroup: sel,
        workgroups: [gx, gy, 1],
      },
      {
        family: 'sampling',
        label: `${label}.draw`,
        pipeline: this.pipes.draw_row,
        bindGroup: draw,
        workgroups: [gx, gy, 1],
      },
    ];
  }

  /** Only the select dispatch (processed logits into state.work): what processLogits runs. */
  bindSelect(owner: Owned, state: SamplerState, logits: GpuTensor, label = 'sampler'): Dispatch {
    return this.bind(
      owner,
      state,
      {
        logits,
        outIds: {
          buffer: owner.buffer(`${label}.ids`, state.rows * 4, STORAGE),
          offset: 0,
          shape: [state.rows],
          dtype: 'u32',
        },
        update: false,
      },
      label,
    )[0]!;
  }

  /**
   * sample(): after select + draw of row 0, compact its kept ids and make `count` draws (draw d uses
   * Philox step d), counting them in hist [V] u32 (which must start at zero).
   */
  bindDrawMany(owner: Owned, state: SamplerState, count: number, hist: GpuTensor, label = 'sampler.many'): Dispatch[] {
    expectTensor(`${label} hist`, hist, [state.vocab], ['u32']);
    const aux = owner.buffer(`${label}.kept`, state.vocab * 4, STORAGE);
    const g1 = this.globals(owner, 1, 0, 0, 0, 0, 1);
    const compact = this.group('compact_row', {
      0: g1,
      5: binding(state.work),
      7: { buffer: state.cuts },
      10: { buffer: aux },
    });
    const { gx, gy } = this.grid(label, Math.ceil(count / WG));
    const g2 = this.globals(owner, 1, 0, 0, 0, count, gx);
    const many = this.group('draw_many', {
      0: g2,
      2: { buffer: state.params },
      5: binding(state.work),
      7: { buffer: state.cuts },
      10: { buffer: aux },
      11: binding(hist),
    });
    return [
      {
        family: 'sampling',
        label: `${label}.compact`,
        pipeline: this.pipes.compact_row,
        bindGroup: compact,
        workgroups: [1, 1, 1],
      },
      {
        family: 'sampling',
        label: `${label}.draws`,
        pipeline: this.pipes.draw_many,
        bindGroup: many,
        workgroups: [gx, gy, 1],
      },
    ];
  }

  private checkRow(state: SamplerState, row: number, what: string): void {
    if (!Number.isInteger(row) || row < 0 || row >= state.rows)
      throw new ShapeError(`${what}: row ${row} is outside [0, ${state.rows})`);
  }

  private grid(label: string, n: number): { gx: number; gy: number } {
    const max = this.ctx.limits.maxComputeWorkgroupsPerDimension;
    const gx = Math.max(1, Math.min(n, max));
    const gy = Math.ceil(n / gx);
    if (gy > max) throw new ShapeError(`${label}: ${n} workgroups exceed ${max} x ${max}`);
    return { gx, gy: Math.max(1, gy) };
  }

  private globals(
    owner: Owned,
    rows: number,
    logitsOff: number,
    outOff: number,
    flags: number,
    ndraws: number,
    perY = 1,
  ): UniformSlice {
    return owner.uniform('sampler.globals', [rows, this.vocab, logitsOff, outOff, flags, ndraws, perY, 0]);
  }

  private group(entry: Entry, res: Record<number, GPUBindingResource>): GPUBindGroup {
    return this.ctx.device.createBindGroup({
      label: `sampling.${entry}`,
      layout: this.pipes[entry].getBindGroupLayout(0),
      entries: Object.entries(res).map(([b, resource]) => ({ binding: Number(b), resource })),
    });
  }

  private submit(list: Dispatch[]): void {
    submitList(this.ctx, list, 'sampler');
  }
}

// One Sampler per (context, vocab): sample() and processLogits() are called repeatedly.
const cache = new WeakMap<GpuContext, Map<number, Promise<Sampler>>>();
function samplerFor(ctx: GpuContext, vocab: number): Promise<Sampler> {
  let m = cache.get(ctx);
  if (!m) cache.set(ctx, (m = new Map()));
  let s = m.get(vocab);
  if (!s) m.set(vocab, (s = Sampler.create(ctx, vocab)));
  return s;
}

/** Records `list` in one compute pass and submits it (the caller waits where it needs to). */
function submitList(ctx: GpuContext, list: readonly Dispatch[], label: string): void {
  const enc = ctx.device.createCommandEncoder({ label });
  const pass = enc.beginComputePass();
  encodeDispatches(pass, list);
  pass.end();
  ctx.submit([enc.finish()]);
}

function oneRow(ctx: GpuContext, owned: Owned, logits: Float32Array): GpuTensor {
  if (logits.length < 1) throw new ShapeError('sample: logits is empty');
  const buf = owned.adopt(ctx.createBufferWithData('sample.logits', logits, STORAGE));
  return { buffer: buf, offset: 0, shape: [1, logits.length], dtype: 'f32' as DType };
}

/**
 * Draws `count` tokens from one logits vector on the GPU: counts per vocab id, the distribution
 * sampled from (softmax over the kept tokens) and the seed used. The row is processed once and
 * its kept ids compacted; each draw is one GPU invocation (Gumbel-max over the kept ids), draw d
 * using Philox step d, i.e. the token a Sampler row with this seed would pick at step d (as long as
 * the penalties do not change in between). prevTokens are counted for the penalties.
 */
export async function sampleRow(
  ctx: GpuContext,
  logits: Float32Array,
  count: number,
  o: NormalizedSampling,
  seed: number,
  prevTokens?: ArrayLike<number>,
  bans?: RowBans,
): Promise<{ counts: Uint32Array; probs: Float32Array; seed: number }> {
  const V = logits.length;
  if (!Number.isInteger(count) || count < 0)
    throw new InvalidOptionError(`sample count ${count} is invalid: must be an integer >= 0`);
  checkVocabRows(ctx, 1, V, 'sample: logits of', 'row');
  const sampler = await samplerFor(ctx, V);
  const owned = new Owned(ctx);
  const errors = new CallErrors(ctx); // this call's GPU errors, nobody else's
  try {
    const [h, p] = await errors.run(() => {
      const { hist, probs } = drawMany(ctx, owned, sampler, logits, count, o, seed, prevTokens, bans);
      return Promise.all([ctx.readBuffer(hist.buffer, 0, V * 4), ctx.readBuffer(probs.buffer, 0, V * 4)]);
    });
    await errors.check();
    return { counts: new Uint32Array(h), probs: new Float32Array(p), seed };
  } finally {
    owned.destroy();
  }
}

/** sampleRow's GPU work: the row processed, then drawn `count` times; its histogram and distribution buffers. */
function drawMany(
  ctx: GpuContext,
  owned: Owned,
  sampler: Sampler,
  logits: Float32Array,
  count: number,
  o: NormalizedSampling,
  seed: number,
  prevTokens?: ArrayLike<number>,
  bans?: RowBans,
): { hist: GpuTensor; probs: GpuTensor } {
  const V = logits.length;
  const state = sampler.createState(owned, 1, o, { seeds: [seed], eosId: -1, stopAtEos: false, bans: bans && [bans] });
  if (prevTokens && prevTokens.length) sampler.addCounts(state, 0, prevTokens);
  const probs: GpuTensor = {
    buffer: owned.buffer('sample.probs', V * 4, STORAGE),
    offset: 0,
    shape: [1, V],
    dtype: 'f32',
  };
  const hist: GpuTensor = {
    buffer: owned.buffer('sample.hist', V * 4, STORAGE),
    offset: 0,
    shape: [V],
    dtype: 'u32',
  };
  const ids: GpuTensor = { buffer: owned.buffer('sample.id', 4, STORAGE), offset: 0, shape: [1], dtype: 'u32' };
  const list = [
    ...sampler.bind(
      owned,
      state,
      { logits: oneRow(ctx, owned, logits), outIds: ids, probsOut: probs, update: false },
      'sample',
    ),
    ...(count > 0 ? sampler.bindDrawMany(owned, state, count, hist) : []),
  ];
  submitList(ctx, list, 'sample');
  return { hist, probs };
}

/**
 * The processed logits of steps 1-4 (logit_bias, repetition penalty, the hard bans `bans`,
 * temperature, frequency and presence penalties) as the sampler's WGSL computes them; with
 * temperature 0 (greedy) the logits are not divided.
 */
export async function processRow(
  ctx: GpuContext,
  logits: Float32Array,
  o: NormalizedSampling,
  prevTokens?: ArrayLike<number>,
  bans?: RowBans,
): Promise<Float32Array> {
  const V = logits.length;
  checkVocabRows(ctx, 1, V, 'processLogits: logits of', 'row');
  const sampler = await samplerFor(ctx, V);
  const owned = new Owned(ctx);
  const errors = new CallErrors(ctx); // this call's GPU errors, nobody else's
  try {
    const z = new Float32Array(
      await errors.run(() => {
        const init = { seeds: [o.seed ?? 0], eosId: -1, stopAtEos: false, bans: bans && [bans] };
        const state = sampler.createState(owned, 1, o, init);
        if (prevTokens && prevTokens.length) sampler.addCounts(state, 0, prevTokens);
        submitList(ctx, [sampler.bindSelect(owned, state, oneRow(ctx, owned, logits))], 'sample');
        return ctx.readBuffer(state.work.buffer, 0, V * 4);
      }),
    );
    await errors.check();
    return z;
  } finally {
    owned.destroy();
  }
}
