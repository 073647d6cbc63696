/**
 * A generation's submits and read-backs: GenIO counts its own (submits, dispatches, bytes read
 * back), and `now` is the clock its timings are taken with.
 */
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
  constructor(private readonly model: GPT2Model) {}
  submit(dispatches: readonly Dispatch[], after?: (enc: GPUCommandEncoder) => void): void {
    this.model.submit(dispatches, after);
    this.submits++;
    this.dispatches += dispatches.length;
  }
  async read(buf: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    const ab = await this.model.ctx.mapCopy(buf, bytes);
    this.bytesReadBack += bytes;
    return ab;
  }
}
