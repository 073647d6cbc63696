/**
 * Sizes checked against the adapter's limits before any GPU work: a buffer that one binding (or
 * one buffer) cannot hold would otherwise fail as GPU validation errors, one per bind group.
 */
import { OutOfMemoryError } from '../errors.js';
import type { GpuContext } from './device.js';

/** The most bytes one storage binding of this device holds (and one buffer). */
export function maxBindingBytes(ctx: GpuContext): number {
  return Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize);
}

/** How many rows of `rowBytes` bytes one storage binding holds. */
export function rowsThatFit(ctx: GpuContext, rowBytes: number): number {
  return Math.floor(maxBindingBytes(ctx) / rowBytes);
}

/**
 * Throws OutOfMemoryError unless `count` rows of the vocabulary (`vocab` 4-byte words each: the
 * logits [count, V] and the sampler's or ranking's buffers of that shape) fit one binding; the
 * message names the option, the sizes and the largest count that fits.
 */
export function checkVocabRows(ctx: GpuContext, count: number, vocab: number, what: string, unit: string): void {
  const bytes = count * vocab * 4;
  const max = maxBindingBytes(ctx);
  if (bytes <= max) return;
  throw new OutOfMemoryError(
    `${what} ${count}: the logits and sampler buffers of ${count} ${unit} x ${vocab} tokens x 4 bytes are ${bytes} bytes, ` +
      `over the adapter's storage binding limit of ${max}; at most ${rowsThatFit(ctx, vocab * 4)} ${unit} fit with this vocabulary`,
  );
}
