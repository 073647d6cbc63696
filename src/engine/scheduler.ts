/**
 * The cached generation loop: after the prompt's step, one loop of schedule -> encode -> submit ->
 * read back -> accept, in which the chosen ids never leave the GPU except for a 4-byte-per-slot
 * read-back that feeds the caller.
 *
 * A decode step is one submit: [forward T=R tokens | sampler -> decode.ids | copy ids -> staging].
 * The sampler writes each slot's id straight into the decode plan's `ids` input, so step s+1 can
 * be queued before step s's ids reach the CPU; up to `depth` steps are in flight (StepQueue).
 * Positions are written with queue.writeBuffer, which is ordered with submits.
 *
 * Besides decode steps, schedule picks:
 *   - read: the pipeline is full (or every step that can be needed is queued): take the oldest ids;
 *   - shift: a slot's next position would reach the window: drain the pipeline, then re-encode
 *     that row's most recent `keep` tokens from position 0 (ContextOverflowError under 'error');
 *   - admit: sequences wait to join (continuous batching) and some slots are parked: drain, seat
 *     them, and run one mixed step (their prompts beside the others' pending tokens);
 *   - end: nothing left to queue or read.
 *
 * Hand-over: with `early`, each slot is handed over as soon as it is final (its history made final,
 * its cache row released); its token in every later step is parked (PARKED_ROW: no K/V write, a NaN
 * row that touches no other; the sampler's latch makes it draw without reading its logits). Steps
 * already in flight still write the row's next slots; any later generation's work on the row is
 * queued after them and overwrites those slots.
 */
import { AbortError, ContextOverflowError, ShapeError } from '../errors.js';
import { Owned, type Dispatch } from '../gpu/common.js';
import { sampleDispatches } from './gen-logprobs.js';
import type { Joiner } from './generate-options.js';
import { decodeMeta, PARKED_ROW, rowMeta, type ForwardPlan } from './model.js';
import { submitPrompt } from './prefill.js';
import {
  acceptStep,
  bansOf,
  feedPending,
  handOver,
  needsHostBans,
  newSlot,
  recordSlot,
  writeBans,
  type Run,
  type Slot,
  type StepTokens,
} from './slots.js';
import { DecodeMeter, joinerStats } from './stats.js';
import { now, StepQueue } from './step-io.js';

/** What the loop does next. */
type Action = 'decode' | 'read' | 'shift' | 'admit' | 'end';

/** A mixed step in flight: its general plan and its sampler bind groups, freed once it is read back. */
interface MixedStep {
  /** The step's number among the run's submits (1: the prompt's). */
  step: number;
  plan: ForwardPlan;
  owner: Owned;
}

/** Runs a generation with the KV cache: the prompt's step, then the loop (see the file's comment). */
export async function generateCached(run: Run): Promise<void> {
  const scheduler = run.errors.run(() => new Scheduler(run));
  await scheduler.start();
  await scheduler.loop();
}

/**
 * One cached run's loop: the decode plan (built once, re-encoded every step), the steps in flight,
 * the mixed steps not read back yet, the figures. The slots themselves live in the run's record.
 */
class Scheduler {
  private readonly decode: ForwardPlan;
  private readonly decodeSample: Dispatch[];
  private readonly steps: StepQueue;
  private readonly meter: DecodeMeter;
  private readonly mixed: MixedStep[] = [];
  /** Steps that can be needed: the longest sequence's count, raised by joiners. */
  private maxSteps: number;

  constructor(private readonly run: Run) {
    const { model, cache, slots } = run;
    const R = slots.length;
    // One token per slot; the sampler writes the next ids into decode.ids, the loop writes each
    // step's meta before submitting it.
    this.decode = model.takePlan(cache, R, R, { decode: true });
    run.plans.push(this.decode);
    this.decodeSample = sampleDispatches(run, run.owned, this.decode.logits, this.decode.ids);
    this.steps = new StepQueue(run.io, run.staging, this.decode.ids.buffer, R * 4, run.logprobs);
    this.meter = new DecodeMeter(run.io, run.stats, R, run.tCall);
    this.maxSteps = run.maxNew;
  }

  private get window(): number {
    return this.run.cache.window;
  }

  /** Submits the prompt's step; every slot's position is then its row's held length. */
  async start(): Promise<void> {
    const tSubmit = await submitPrompt(this.run, this.decode.ids, this.steps);
    this.meter.promptSubmitted(tSubmit);
    for (const slot of this.run.slots) slot.pos = this.run.cache.lengths[slot.row]!;
  }

  /** The loop; on success the slots' histories are final in the cache and the stats complete. */
  async loop(): Promise<void> {
    const { opts, cache, slots, stats } = this.run;
    try {
      for (;;) {
        if (opts.signal?.aborted) throw new AbortError(`generation aborted after ${this.meter.accepted} steps`);
        const action = this.schedule();
        if (action === 'end') break;
        if (action === 'read') await this.readBack();
        else if (action === 'shift') {
          if (!(await this.shift())) break; // every slot finished while draining
        } else if (action === 'admit') await this.admit();
        else this.run.errors.run(() => this.decodeStep());
      }
    } finally {
      // Mixed steps not read back (an error, or steps past the end): their plans go with the run.
      for (const m of this.mixed.splice(0)) {
        m.owner.destroy();
        m.plan.destroy();
      }
    }
    // Slots that finished early stopped being recorded; what the GPU computed past that is ignored.
    for (const slot of slots) recordSlot(cache, slot, true);
    Object.assign(stats, this.meter.snapshot(this.steps.submitted));
  }

  /** The next action, from the slots and the steps in flight (decides only; changes nothing). */
  private schedule(): Action {
    const { slots } = this.run;
    // A slot whose bans follow its ids needs every step read back before the next (writeBans).
    const depth = needsHostBans(slots) ? 1 : this.run.depth;
    if (slots.every((s) => s.finished)) return this.canAdmit() ? 'admit' : 'end';
    if (this.steps.submitted >= this.maxSteps) return this.steps.size > 0 ? 'read' : 'end';
    if (this.steps.size >= depth) return 'read';
    if (this.dueForShift().length > 0) return 'shift';
    return this.canAdmit() ? 'admit' : 'decode';
  }

  /** Active slots whose next position would reach the window. */
  private dueForShift(): Slot[] {
    return this.run.slots.filter((s) => !s.finished && s.pos >= this.window);
  }

  /** Whether sequences wait to join and some slot is parked (released) for them. */
  private canAdmit(): boolean {
    return (this.run.joiners?.length ?? 0) > 0 && this.run.slots.some((s) => s.released);
  }

  /** Queues a decode step: every slot feeds its newest token; final slots stay at their last position. */
  private decodeStep(): void {
    const { slots } = this.run;
    this.decode.write({
      meta: decodeMeta(
        slots.map((s) => Math.min(s.pos, this.window - 1)),
        slots.map((s) => (s.released ? PARKED_ROW : s.row)),
      ),
    });
    writeBans(this.run);
    this.steps.submit([...this.decode.dispatches, ...this.decodeSample]);
    for (const s of slots) if (!s.finished && s.pos < this.window) s.pos++;
  }

  /** Reads the oldest step back, accepts its ids, frees a mixed step that is done, hands final slots over. */
  private async readBack(): Promise<void> {
    const { slots, rules, early } = this.run;
    const words = await this.steps.next();
    this.meter.stepRead();
    acceptStep(slots, words, rules, this.run.logprobs?.decode(words));
    while (this.mixed.length && this.mixed[0]!.step <= this.meter.accepted) {
      const m = this.mixed.shift()!;
      m.owner.destroy();
      this.run.model.keepPlan(m.plan);
    }
    for (const s of slots) if (s.joinedAt && !s.firstAt && s.out.length > 0) s.firstAt = now();
    // Without joiners the last ones go at the end, with the final figures; with joiners every slot
    // is handed over as it finishes, so that a waiting sequence may take it.
    if (early && (this.run.joiners || !slots.every((s) => s.finished))) this.handOverFinished();
  }

  /** Every step in flight read back (every pending token known on the CPU). */
  private async drain(): Promise<void> {
    while (this.steps.size) await this.readBack();
  }

  /** Hands over the slots that became final: parked from now on, their history final, their row released. */
  private handOverFinished(): void {
    const { slots, model, cache, sampler } = this.run;
    slots.forEach((slot, i) => {
      if (!slot.finished || slot.released) return;
      model.kernels.sampler.park(sampler, i);
      recordSlot(cache, slot, true);
      const snapshot = this.meter.snapshot(this.steps.submitted);
      const stats = slot.joinedAt
        ? joinerStats(snapshot, { joinedAt: slot.joinedAt, firstAt: slot.firstAt, tokens: slot.out.length })
        : snapshot;
      handOver(slot, i, cache, stats);
    });
  }

  /**
   * Shifts the slots due: drains (every fed token must be known on the CPU to re-encode), then
   * each keeps its row's most recent `keep` tokens, re-encoded from position 0. false: every slot
   * finished while draining (the run ends).
   */
  private async shift(): Promise<boolean> {
    const { cache, slots, stats } = this.run;
    const due = this.dueForShift();
    await this.drain();
    if (slots.every((s) => s.finished)) return false;
    for (const slot of slots) recordSlot(cache, slot, false);
    for (const slot of due) {
      if (slot.finished) continue;
      if (cache.onOverflow === 'error') {
        throw new ContextOverflowError(
          `row ${slot.row} reached the context window of ${this.window} tokens; use onOverflow: 'shift' to keep going`,
        );
      }
      const kept = cache.shift(slot.row);
      this.run.errors.run(() => this.reencode(slot.row, kept));
      cache.commit(slot.row);
      slot.pos = kept.length;
      stats.shifts++;
    }
    return true;
  }

  /** Re-encodes `kept` tokens of cache row `row` from position 0 (a context shift). No logits are needed. */
  private reencode(row: number, kept: readonly number[]): void {
    const { model, cache, plans, io } = this.run;
    // Shifts keep the same number of tokens, so one plan per length serves every shift of a run
    // (GPU memory stays flat however many shifts happen).
    let plan = plans.find((p) => p.cache === cache && p.T === kept.length && p.R === 1 && p.tag === 'reencode');
    if (!plan) {
      plan = model.takePlan(cache, kept.length, 1); // exact: every shift of a cache keeps the same count
      plan.tag = 'reencode';
      plans.push(plan);
    }
    plan.write({ ids: kept, meta: rowMeta(row, 0, kept.length), lastIdx: Uint32Array.of(kept.length - 1) });
    io.submit(plan.dispatches);
  }

  /**
   * Continuous batching: waiting sequences take parked slots. The steps in flight are drained,
   * each joiner gets its slot (its cache row, a fresh sampler row: options, seed, counts of its
   * context and prompt), then one mixed step runs.
   */
  private async admit(): Promise<void> {
    const free = this.run.slots.flatMap((s, i) => (s.released ? [i] : []));
    const seats = this.run.joiners!.seat(free); // canAdmit: at least one
    await this.drain();
    const t = now();
    this.run.errors.run(() => {
      for (const { slot, joiner } of seats) this.seat(slot, joiner, t);
      for (const { joiner } of seats) this.maxSteps = Math.max(this.maxSteps, this.steps.submitted + joiner.maxNew);
      this.submitMixed(new Set(seats.map((x) => x.slot)));
    });
  }

  /** Seats `joiner` in slot `index` (parked) at time t. */
  private seat(index: number, joiner: Joiner, t: number): void {
    const { model, cache, slots, sampler } = this.run;
    const { row, ids, seed, onToken, onSequenceDone } = joiner;
    const opts = { sampling: joiner.sampling, maxNew: joiner.maxNew, stopStrings: joiner.stopStrings };
    // The run's logprobs (the group merges only turns that ask for the same).
    const lp = this.run.logprobs ? { logprobs: this.run.logprobs.top } : {};
    const seq = { ...opts, stopTokenIds: joiner.stopTokenIds, ...lp };
    const context = cache.tokens[row]!.length;
    if (context + ids.length >= this.window)
      throw new ShapeError(
        `admit: row ${row} holds ${context} tokens; ${ids.length} more do not fit the window of ${this.window}`,
      );
    cache.acquire(model, [row]);
    const history = [...cache.tokens[row]!, ...ids];
    const bans = bansOf(seq, this.run.rules.eosIds, history);
    slots[index] = newSlot(model.tokenizer, row, seq, { onToken, onSequenceDone }, bans.slot, t);
    const kernel = model.kernels.sampler;
    kernel.resetRow(sampler, index);
    kernel.setRow(sampler, index, seq.sampling, seed, bans.init);
    cache.append(row, ids);
    kernel.addCounts(sampler, index, history);
  }

  /**
   * One step in a general plan: every active slot feeds its pending token at its position, every
   * joiner (slots `joined`) its new tokens; parked slots feed nothing and their logits go unread.
   * Every slot samples as in a decode step.
   */
  private submitMixed(joined: ReadonlySet<number>): void {
    const { model, cache, slots } = this.run;
    const R = slots.length;
    const step: StepTokens = { ids: [], meta: [] };
    const last = new Uint32Array(R); // parked slots read token 0's logits, unused (latched)
    slots.forEach((slot, i) => {
      if (slot.released) return;
      if (joined.has(i)) {
        feedPending(cache, slot.row, step);
        slot.pos = cache.lengths[slot.row]!;
      } else {
        step.ids.push(slot.out.at(-1)!); // its pending token, as the decode step would feed it
        step.meta.push(slot.row, slot.pos++);
      }
      last[i] = step.ids.length - 1;
    });
    const plan = model.takePlan(cache, step.ids.length, R, { bucket: true });
    const owner = new Owned(model.ctx);
    this.mixed.push({ step: this.steps.submitted + 1, plan, owner });
    plan.write({ ids: step.ids, meta: Uint32Array.from(step.meta), lastIdx: last });
    const sample = sampleDispatches(this.run, owner, plan.logits, this.decode.ids);
    writeBans(this.run);
    this.steps.submit([...plan.dispatches, ...sample]);
  }
}
