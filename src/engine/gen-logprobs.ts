/**
 * Log-probabilities during generation (GenerateOptions.logprobs), computed on the GPU in the step
 * that draws each token: the sampler's draw writes the chosen token's log-prob under the processed
 * distribution ([rows] f32), and the logprobs kernel, bound to the step's logits with the ids the
 * sampler just wrote as its targets, the raw log-softmax of that token, the argmax and the top N
 * ([rows, 2 + 2N] u32). The step's submit copies both after the ids into its staging buffer, so a
 * step reads back rows x (1 + 1 + 2 + 2N) words, never the logits; steps in flight each have their
 * own staging buffer, as for the ids.
 */
import type { Dispatch, GpuTensor, Owned } from '../gpu/common.js';
import { decodeLogprobs, logprobsRowWords, type LogprobsKernel } from '../kernels/logprobs.js';
import type { SamplerState } from '../kernels/sampler.js';
import type { TokenLogprob } from './generate-options.js';
import type { GPT2Model } from './model.js';

// STORAGE | COPY_DST | COPY_SRC as numbers: the GPUBufferUsage global may not exist at import time in Node.
const STORAGE = 0x80 | 0x8 | 0x4;

/** One run's logprobs buffers: what each step writes, copies out and decodes. */
export class StepLogprobs {
  /** [rows] f32: the chosen tokens' processed log-probs (the sampler's draw writes them). */
  readonly processed: GpuTensor;
  /** [rows, 2 + 2 top] u32: the logprobs kernel's output. */
  readonly out: GpuTensor;
  /** Bytes a step copies after the ids. */
  readonly bytes: number;

  constructor(
    private readonly kernel: LogprobsKernel,
    owned: Owned,
    readonly rows: number,
    readonly top: number,
  ) {
    const words = logprobsRowWords(top);
    this.processed = {
      buffer: owned.buffer('logprobs.processed', rows * 4, STORAGE),
      offset: 0,
      shape: [rows],
      dtype: 'f32',
    };
    this.out = {
      buffer: owned.buffer('logprobs.out', rows * words * 4, STORAGE),
      offset: 0,
      shape: [rows, words],
      dtype: 'u32',
    };
    this.bytes = rows * (1 + words) * 4;
  }

  /** The logprobs dispatch of a step: the raw log-softmax of the ids the sampler wrote into `ids`. */
  bind(owner: Owned, logits: GpuTensor, ids: GpuTensor): Dispatch {
    return this.kernel.bind(owner, { logits, targets: ids, out: this.out, top: this.top }, 'gen.logprobs');
  }

  /** Records the copies of this step's results into `dst` at byte `offset` (after the ids). */
  copy(enc: GPUCommandEncoder, dst: GPUBuffer, offset: number): void {
    enc.copyBufferToBuffer(this.processed.buffer, 0, dst, offset, this.rows * 4);
    enc.copyBufferToBuffer(this.out.buffer, 0, dst, offset + this.rows * 4, this.bytes - this.rows * 4);
  }

  /** Each row's entry from a step's read-back: ids [rows] first, then what `copy` wrote. */
  decode(words: Uint32Array): TokenLogprob[] {
    const R = this.rows;
    const processed = new Float32Array(words.buffer, words.byteOffset + R * 4, R);
    const raw = decodeLogprobs(words.subarray(2 * R), R, this.top);
    return raw.map((r, i) => ({
      logprob: r.logprob,
      processedLogprob: processed[i]!,
      greedy: r.argmax === words[i],
      ...(this.top > 0 ? { top: r.top } : {}),
    }));
  }
}

/** What a step's sampling needs: the run's sampler state and, when on, its logprobs. */
export interface SamplingRun {
  model: GPT2Model;
  sampler: SamplerState;
  logprobs?: StepLogprobs;
}

/**
 * The sampling dispatches of a step over `logits` [rows, V]: select and draw into `outIds`, then
 * (logprobs on) the logprobs kernel over the same logits with those ids as targets.
 */
export function sampleDispatches(run: SamplingRun, owner: Owned, logits: GpuTensor, outIds: GpuTensor): Dispatch[] {
  const lp = run.logprobs;
  const sample = run.model.kernels.sampler.bind(owner, run.sampler, {
    logits,
    outIds,
    ...(lp ? { logprobOut: lp.processed } : {}),
  });
  return lp ? [...sample, lp.bind(owner, logits, outIds)] : sample;
}
