/**
 * The GPU errors of one call (a generation, a beam search, a logits read-back...).
 *
 * WebGPU reports a validation or out-of-memory error either to the innermost error scope open when
 * the offending command was issued, or, outside any scope, to the device's 'uncapturederror'
 * event: there it belongs to nobody (Dawn in Node also prints it to stdout), and any call that
 * drained it would receive another caller's error. So each call runs its GPU work (building plans
 * and bind groups, writing inputs, submitting) inside scopes of its own: `run(fn)` pushes one scope
 * per filter, runs fn synchronously (no other caller's code can run in between) and pops them;
 * what they caught is this call's alone. `throwIfCaught` ends the call at its next step once an
 * error has come back (without waiting); `check` waits for every scope and throws the first error.
 */
import { GPUValidationError, OutOfMemoryError } from '../errors.js';
import type { GpuContext } from './device.js';

const FILTERS: readonly GPUErrorFilter[] = ['validation', 'out-of-memory', 'internal'];

export class CallErrors {
  private readonly caught: GPUError[] = [];
  private readonly pending = new Set<Promise<void>>();

  constructor(private readonly ctx: GpuContext) {}

  /** Runs `fn` (synchronous GPU work of this call) inside this call's error scopes. */
  run<T>(fn: () => T): T {
    const device = this.ctx.device;
    for (const f of FILTERS) device.pushErrorScope(f);
    try {
      return fn();
    } finally {
      for (let i = 0; i < FILTERS.length; i++) {
        const p: Promise<void> = device.popErrorScope().then(
          (e) => void (e && this.caught.push(e)),
          () => undefined, // a lost device: the call learns it from checkAlive / its read-backs
        );
        this.pending.add(p);
        void p.then(() => this.pending.delete(p));
      }
    }
  }

  /** Throws the first error the scopes have reported so far (GPUValidationError or OutOfMemoryError). */
  throwIfCaught(): void {
    if (this.caught.length === 0) return;
    const first = this.caught[0]!;
    const more = this.caught.length > 1 ? ` (and ${this.caught.length - 1} more)` : '';
    const kind = first.constructor?.name || 'GPUError';
    const msg = `GPU ${kind} in this call: ${first.message}${more}`;
    throw kind === 'GPUOutOfMemoryError' ? new OutOfMemoryError(msg) : new GPUValidationError(msg);
  }

  /** Waits until every scope of this call has reported, then throws the first error, if any. */
  async check(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
    this.throwIfCaught();
  }
}
