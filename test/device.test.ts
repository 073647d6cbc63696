/** Device acquisition: no WebGPU / no adapter give WebGPUUnavailableError with the way out; GPU
 *  validation errors surface as thrown errors; the context records limits and features. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createContext } from '../src/engine/device.js';
import { GPUValidationError, InvalidOptionError, WebGPUUnavailableError } from '../src/errors.js';
import { nodeGPU, sleepingWaitYield } from '../src/node.js';
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


test('sleepingWaitYield sleeps in slices only while a wait is pending, then stops', async () => {
  const slices: number[] = [];
  const y = sleepingWaitYield(3, (ms) => slices.push(ms));
  let resolve!: () => void;
  const p = new Promise<void>((r) => (resolve = r));
  y(p);
  y(p); // two waits on one loop: still one tick per turn
  await new Promise((r) => setTimeout(r, 30));
  const during = slices.length;
  assert.ok(during >= 3, `slept ${during} slices while pending`);
  assert.ok(slices.every((ms) => ms === 3));
  resolve();
  await p;
  await new Promise((r) => setTimeout(r, 30));
  const after = slices.length;
  await new Promise((r) => setTimeout(r, 30));
  assert.is(slices.length, after, 'no slices once nothing is pending');
  // A rejected wait ends the loop too (and the rejection stays the caller's).
  const q = Promise.reject(new Error('lost'));
  y(q);
  await q.catch(() => {});
  await new Promise((r) => setTimeout(r, 20));
  const n = slices.length;
  await new Promise((r) => setTimeout(r, 20));
  assert.is(slices.length, n);
  assert.throws(() => sleepingWaitYield(0), (e: Error) => e instanceof InvalidOptionError && /sliceMs must be in \(0, 50\], got 0/.test(e.message));
});

test('sleepingWaitYield runs one loop: a wait that starts as the last one ends adds no second loop', async () => {
  let slices = 0;
  const y = sleepingWaitYield(1, () => slices++);
  const turns = async (n: number) => { for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r)); };
  // Decode steps do this: a read-back resolves, and the next one is asked for before the loop's
  // already queued tick runs.
  for (let step = 0; step < 5; step++) {
    let resolve!: () => void;
    const p = new Promise<void>((r) => (resolve = r));
    y(p);
    await turns(2);
    resolve();
    await p;
  }
  let resolve!: () => void;
  const last = new Promise<void>((r) => (resolve = r));
  y(last);
  const s0 = slices;
  await turns(40);
  const perTurn = (slices - s0) / 40;
  resolve(); // before asserting: a pending wait would keep its loop (and this process) alive
  await last;
  assert.ok(perTurn > 0.8 && perTurn < 1.2, `${perTurn} slices per event-loop turn (one loop sleeps once per turn)`);
});

test('a context routes read-backs, drains and pipeline builds through its WaitYield (auto: CPU adapters only)', async () => {
  const seen: Array<Promise<unknown>> = [];
  const ctx = await createContext(nodeGPU(), { waitYield: (p) => seen.push(p), yieldWhileWaiting: 'auto' });
  try {
    assert.ok(ctx.isCpuAdapter, 'these tests run on lavapipe');
    assert.ok(ctx.waitYield);
    const b = ctx.createBufferWithData('t', new Uint32Array([7, 8, 9]), GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC);
    const n0 = seen.length;
    const out = new Uint32Array(await ctx.readBuffer(b));
    assert.equal(Array.from(out), [7, 8, 9]);
    assert.is(seen.length, n0 + 1, 'one wait for the read-back');
    await ctx.drain();
    assert.is(seen.length, n0 + 2);
    await ctx.pipeline('elementwise', 'add');
    assert.is(seen.length, n0 + 3);
  } finally {
    ctx.destroy();
  }
  const off = await createContext(nodeGPU(), { waitYield: () => assert.unreachable('spin mode must not yield'), yieldWhileWaiting: false });
  assert.is(off.waitYield, null);
  await off.drain();
  off.destroy();
  await rejects(() => createContext(nodeGPU(), { yieldWhileWaiting: 'yes' as never }), (e) => e instanceof InvalidOptionError && /yieldWhileWaiting must be true, false or 'auto', got yes/.test(e.message));
});

test.run();
