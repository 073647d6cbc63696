/**
 * A generation's statistics (GenerateStats): the figures it starts with, the per-decode-step
 * figures of a cached run (DecodeMeter), and a joining sequence's own timings.
 */
import type { GenerateStats } from './generate-options.js';
import { now, type GenIO } from './step-io.js';

/** The figures before anything ran: zeros, and the rows the run advances. */
export function emptyStats(batchRows: number): GenerateStats {
  return {
    setupMs: 0,
    prefillMs: 0,
    firstTokenMs: 0,
    decodeMsPerToken: 0,
    tokensPerSecond: 0,
    readbackBytesPerToken: 0,
    batchRows: batchRows,
    steps: 0,
    shifts: 0,
    submitsPerStep: 0,
    dispatchesPerStep: 0,
  };
}

/**
 * A cached run's figures. The prompt's step ends the set-up when it is submitted and gives the
 * first token when it is read back; the per-step figures count decode steps only (the prompt's
 * step and one-off submits such as re-encodes are left out of submits and dispatches per step).
 */
export class DecodeMeter {
  /** Steps read back so far (the prompt's is the first). */
  accepted = 0;
  private tSubmit = 0;
  private decodeStart = 0;
  private base = { submits: 0, dispatches: 0 };

  constructor(
    private readonly io: GenIO,
    private readonly stats: GenerateStats,
    private readonly rows: number,
    private readonly tCall: number,
  ) {}

  /** The prompt's step was submitted at tSubmit (when its submit began). */
  promptSubmitted(tSubmit: number): void {
    this.tSubmit = tSubmit;
    this.stats.setupMs = tSubmit - this.tCall;
    this.stats.steps = 1;
    this.base = { submits: this.io.submits, dispatches: this.io.dispatches };
  }

  /** A step's ids reached the CPU. */
  stepRead(): void {
    this.accepted++;
    if (this.accepted > 1) return;
    const t = now();
    this.stats.firstTokenMs = t - this.tCall;
    this.stats.prefillMs = t - this.tSubmit;
    this.decodeStart = t;
  }

  /** The run's figures as of now, with `submitted` steps submitted (the prompt's included). */
  snapshot(submitted: number): GenerateStats {
    const st = { ...this.stats, steps: this.accepted };
    if (submitted > 1) {
      st.submitsPerStep = (this.io.submits - this.base.submits) / (submitted - 1);
      st.dispatchesPerStep = (this.io.dispatches - this.base.dispatches) / (submitted - 1);
    }
    const decodeSteps = this.accepted - 1;
    const ms = now() - this.decodeStart;
    st.decodeMsPerToken = decodeSteps > 0 ? ms / decodeSteps : 0;
    st.tokensPerSecond = decodeSteps > 0 ? (decodeSteps * this.rows) / (ms / 1000) : 0;
    st.readbackBytesPerToken = this.io.bytesReadBack / Math.max(1, this.accepted) / this.rows;
    return st;
  }
}

/**
 * A joining sequence's own figures in a snapshot of its run: no set-up, from joining to its first
 * token (its prefill), then per token of its own.
 */
export function joinerStats(
  st: GenerateStats,
  joiner: { joinedAt: number; firstAt: number; tokens: number },
): GenerateStats {
  const end = now();
  const { joinedAt, firstAt, tokens } = joiner;
  st.setupMs = 0;
  st.firstTokenMs = st.prefillMs = firstAt - joinedAt;
  st.steps = tokens;
  st.decodeMsPerToken = tokens > 1 ? (end - firstAt) / (tokens - 1) : 0;
  st.tokensPerSecond = tokens > 1 ? (1000 * (tokens - 1)) / (end - firstAt) : 0;
  return st;
}
