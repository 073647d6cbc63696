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
import { deriveSeed, randomSeed } from '../sampling/options.js';
import type { KVCache } from './kvcache.js';
import { decodeMeta, ForwardPlan, PARKED_ROW, rowMeta, type GPT2Model } from './model.js';
import { TextStreamer } from './tokenizer.js';
import {
  cacheRowsOf,
  generationCapacity,
  seedsOf,
  sequenceOptions,
  validateGenerate,
  type Admission,
  type FinishReason,
  type GeneratedSequence,
  type GenerateOptions,
  type GenerateResult,
  type GenerateStats,
  type SequenceOptions,
} from './generate-options.js';
import { GenIO, now } from './step-io.js';

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
  Admission,
  FinishReason,
  GeneratedSequence,
  GenerateOptions,
  GenerateResult,
  GenerateStats,
  SequenceDoneEvent,
  SequenceOptions,
  TokenEvent,
} from './generate-options.js';

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
  const { maxNew: sharedMaxNew, rows: R, depth } = validateGenerate(opts, model.ctx.isCpuAdapter);
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
 * Appends the tokens of cache row cr that the cache does not hold yet (cache.pending) to a step's
 * ids and meta, and commits them (the step writes their K/V).
 */
function feedPending(cache: KVCache, cr: number, ids: number[], meta: number[]): void {
  const from = cache.lengths[cr]!;
  cache.pending(cr).forEach((t, i) => {
    ids.push(t);
    meta.push(cr, from + i);
  });
  cache.commit(cr);
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
      // Shift: keep the most recent tokens of history + prompt (keep < window), none held.
      cache.append(cr, promptIds);
      cache.shift(cr);
      stats.shifts++;
    } else {
      cache.append(cr, promptIds);
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
    for (const cr of rows) cache.commit(cr); // every row's context is `seq` (the same prompt on empty rows)
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
      cache.append(a.row, a.ids);
      sampler.addCounts(state as never, r, cache.tokens[a.row]!);
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
          const kept = cache.shift(cr);
          await reencode(model, cache, cr, kept, plans, io);
          cache.commit(cr);
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
      cache.append(cr, [out[i]!]);
      if (i < out.length - 1 || !final) cache.commit(cr, 1);
    }
    fedCount[r] = Math.max(fedCount[r]!, upto);
  }
}

/** Re-encodes `kept` tokens of row r from position 0 (a context shift). No logits are needed. */
async function reencode(
  model: GPT2Model,
  cache: KVCache,
  r: number,
  kept: readonly number[],
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
  for (let r = 0; r < R; r++) cache.reset(rows[r]!, seqs[r]!);
  ctx.throwIfErrors();
}
