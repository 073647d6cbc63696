/**
 * A generation's submits and read-backs: GenIO counts its own (submits, dispatches, bytes read
 * back), and `now` is the clock its timings are taken with.
 */
import type { CallErrors } from '../gpu/call-errors.js';
import type { Dispatch } from '../gpu/common.js';
import type { GPT2Model } from './model.js';

export const now = (): number => (globalThis.performance ?? Date).now();

/**
 * What one generation submits and reads back, counted by the generation itself: the device's
 * counters (ctx.stats) also count every other generation running on the model at the same time
 * (interleaved sessions), so per-step figures taken from them would be wrong there.
 */
export class GenIO {
  submits = 0;
  dispatches = 0;
  bytesReadBack = 0;
  /** `errors`: the generation's own GPU errors; a read-back throws the first one reported. */
  constructor(
    private readonly model: GPT2Model,
    private readonly errors?: CallErrors,
  ) {}
  submit(dispatches: readonly Dispatch[], after?: (enc: GPUCommandEncoder) => void): void {
    this.model.submit(dispatches, after);
    this.submits++;
    this.dispatches += dispatches.length;
  }
  async read(buf: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    const ab = await this.model.ctx.mapCopy(buf, bytes);
    this.errors?.throwIfCaught(); // the steps after a failed one are not worth reading
    this.bytesReadBack += bytes;
    return ab;
  }
}

/** Results a step copies into its staging buffer after the ids (the step's logprobs). */
export interface StepExtra {
  bytes: number;
  copy(enc: GPUCommandEncoder, dst: GPUBuffer, offset: number): void;
}

/**
 * The steps of a cached run that were submitted and not read back yet, oldest first. Every step's
 * sampler writes the chosen ids into one buffer (the decode plan's ids input: the next step reads
 * them on the GPU); the step's submit also copies them (and `extra`, if any, after them) into the
 * next buffer of a staging ring, one per step in flight, and the read-back of that copy starts at
 * once. Invariant: size <= staging.length.
 */
export class StepQueue {
  /** Steps submitted so far (the prompt's is the first). */
  submitted = 0;
  private readonly inflight: Array<Promise<Uint32Array>> = [];

  constructor(
    private readonly io: GenIO,
    private readonly staging: readonly GPUBuffer[],
    private readonly ids: GPUBuffer,
    private readonly bytes: number,
    private readonly extra?: StepExtra,
  ) {}

  /** Steps in flight. */
  get size(): number {
    return this.inflight.length;
  }

  /** Submits one step; `before` records commands of its own ahead of the ids copy. */
  submit(dispatches: readonly Dispatch[], before?: (enc: GPUCommandEncoder) => void): void {
    const slot = this.staging[this.submitted % this.staging.length]!;
    this.io.submit(dispatches, (enc) => {
      before?.(enc);
      enc.copyBufferToBuffer(this.ids, 0, slot, 0, this.bytes);
      this.extra?.copy(enc, slot, this.bytes);
    });
    const read = this.io.read(slot, this.bytes + (this.extra?.bytes ?? 0)).then((ab) => new Uint32Array(ab));
    read.catch(() => undefined); // a failed run may leave read-backs nobody awaits
    this.inflight.push(read);
    this.submitted++;
  }

  /** The ids of the oldest step in flight (size > 0), then its extra words. */
  next(): Promise<Uint32Array> {
    return this.inflight.shift()!;
  }
}
