/** Device acquisition: no WebGPU / no adapter give WebGPUUnavailableError with the way out; GPU
 *  validation errors surface as thrown errors; the context records limits and features. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createContext } from '../src/engine/device.js';
import { GPUValidationError, WebGPUUnavailableError } from '../src/errors.js';
import { context, rejects } from './helpers.js';

test('no WebGPU at all, or no adapter: WebGPUUnavailableError naming the Vulkan install script', async () => {
  await rejects(() => createContext(undefined), (e) => e instanceof WebGPUUnavailableError && /install-vulkan-cpu\.sh/.test(e.message));
  const noAdapter = { requestAdapter: async () => null } as unknown as GPU;
  await rejects(() => createContext(noAdapter), (e) => e instanceof WebGPUUnavailableError && /lavapipe/.test(e.message));
  const throwing = { requestAdapter: async () => { throw new Error('driver exploded'); } } as unknown as GPU;
  await rejects(() => createContext(throwing), (e) => e instanceof WebGPUUnavailableError && /driver exploded/.test(e.message));
});

test("the device gets the adapter's maxima for binding and buffer sizes, and records features", async () => {
  const ctx = await context();
  assert.ok(ctx.limits.maxStorageBufferBindingSize >= 128 * 1024 * 1024, `binding limit ${ctx.limits.maxStorageBufferBindingSize}`);
  assert.is(ctx.adapter.limits.maxStorageBufferBindingSize, ctx.limits.maxStorageBufferBindingSize);
  assert.type(ctx.features.timestampQuery, 'boolean');
  assert.ok(ctx.adapter.features.length > 0);
});

test('an uncaptured validation error is thrown by throwIfErrors, not ignored', async () => {
  const ctx = await context();
  // MAP_READ may only be combined with COPY_DST: a validation error, reported asynchronously.
  ctx.device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE });
  await ctx.device.queue.onSubmittedWorkDone();
  await new Promise((r) => setTimeout(r, 50));
  assert.throws(() => ctx.throwIfErrors(), (e: Error) => e instanceof GPUValidationError);
  ctx.throwIfErrors(); // drained
});

test('buffers are tracked: created and destroyed bytes add up', async () => {
  const ctx = await context();
  const before = ctx.liveBuffers;
  const b = ctx.createBuffer('t', 1000, GPUBufferUsage.STORAGE);
  assert.equal(ctx.liveBuffers, { count: before.count + 1, bytes: before.bytes + 1000 });
  ctx.destroyBuffer(b);
  assert.equal(ctx.liveBuffers, before);
});

test.run();
