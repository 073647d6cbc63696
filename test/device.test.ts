/** Device acquisition: no WebGPU / no adapter give WebGPUUnavailableError with the way out; GPU
 *  validation errors surface as thrown errors; the context records limits and features; a device
 *  the host hands over is recognised from its adapter info and never destroyed by the engine. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { contextFromDevice, createContext } from '../src/gpu/device.js';
import { Engine } from '../src/engine/engine.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { cfgOf } from './model-util.js';
import { GPUValidationError, InvalidOptionError, WebGPUUnavailableError } from '../src/errors.js';
import { nodeGPU, sleepingWaitYield } from '../src/node.js';
import { context, downloadU32, poisoned, rejects, run, withDevice } from './helpers.js';
import { binding, UNIFORM_ARENA_BYTES } from '../src/gpu/common.js';
import { deviceProfile } from '../src/kernels/profile.js';

test('no WebGPU at all, or no adapter: WebGPUUnavailableError naming the Vulkan install script', async () => {
  await rejects(
    () => createContext(undefined),
    (e) => e instanceof WebGPUUnavailableError && /install-vulkan-cpu\.sh/.test(e.message),
  );
  const noAdapter = { requestAdapter: async () => null } as unknown as GPU;
  await rejects(
    () => createContext(noAdapter),
    (e) => e instanceof WebGPUUnavailableError && /lavapipe/.test(e.message),
  );
  const throwing = {
    requestAdapter: async () => {
      throw new Error('driver exploded');
    },
  } as unknown as GPU;
  await rejects(
    () => createContext(throwing),
    (e) => e instanceof WebGPUUnavailableError && /driver exploded/.test(e.message),
  );
});

test("the device gets the adapter's maxima for binding and buffer sizes, and records features", async () => {
  const ctx = await context();
  assert.ok(
    ctx.limits.maxStorageBufferBindingSize >= 128 * 1024 * 1024,
    `binding limit ${ctx.limits.maxStorageBufferBindingSize}`,
  );
  assert.is(ctx.adapter.limits.maxStorageBufferBindingSize, ctx.limits.maxStorageBufferBindingSize);
  assert.type(ctx.features.timestampQuery, 'boolean');
  assert.ok(ctx.adapter.features.length > 0);
});

test('the subgroup size is recorded where the adapter reports a single one; a device without subgroups has none, and its matmul keeps gemv_kn_cols', async () => {
  const adapter = await nodeGPU().requestAdapter();
  const info = adapter!.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  const ctx = await context();
  const single =
    ctx.features.subgroups && info.subgroupMinSize !== undefined && info.subgroupMinSize === info.subgroupMaxSize;
  assert.is(ctx.features.subgroupSize, single ? info.subgroupMinSize : null);
  if (ctx.isCpuAdapter && ctx.features.subgroups) assert.is(ctx.features.subgroupSize, 8, 'lavapipe: 8-lane subgroups');
  // Modules joined from files ('a+b'): an unknown part is named.
  assert.throws(
    () => ctx.shaderModule('matmul+no_such_kernel'),
    (e: Error) => /no shader named "no_such_kernel" \(shaders\/no_such_kernel\.wgsl\)/.test(e.message),
  );
  const plain = await createContext(nodeGPU(), { disableFeatures: ['subgroups'] });
  try {
    assert.equal([plain.features.subgroups, plain.features.subgroupSize], [false, null]);
    assert.is(deviceProfile(plain).matmul.subgroupLanes, 0);
    assert.is(deviceProfile(plain).name, plain.isCpuAdapter ? 'cpu' : 'gpu');
  } finally {
    plain.destroy();
  }
});

test('an uncaptured validation error is thrown by throwIfErrors, not ignored', async () => {
  const ctx = await context();
  // MAP_READ may only be combined with COPY_DST: a validation error, reported asynchronously.
  ctx.device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE });
  await ctx.device.queue.onSubmittedWorkDone();
  await new Promise((r) => setTimeout(r, 50));
  assert.throws(
    () => ctx.throwIfErrors(),
    (e: Error) => e instanceof GPUValidationError,
  );
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

test('uniform slices share aligned arena buffers, spill into new ones, and each binds its own words', async () => {
  await withDevice(async ({ ctx, owned }) => {
    const align = ctx.limits.minUniformBufferOffsetAlignment;
    const n = Math.ceil((2.5 * UNIFORM_ARENA_BYTES) / align); // spans three arenas
    const before = ctx.liveBuffers.count;
    // Sizes of 1..12 words (16..48 bytes): the slice is the 16-byte-rounded size.
    const slices = Array.from({ length: n }, (_, i) =>
      owned.uniform(
        `u${i}`,
        Array.from({ length: 1 + (i % 12) }, (_, j) => i * 16 + j),
      ),
    );
    assert.is(ctx.liveBuffers.count - before, 3, 'arena buffers created');
    for (const [i, s] of slices.entries()) {
      assert.is(s.offset % align, 0, `slice ${i} offset ${s.offset}`);
      assert.is(s.size, 16 * Math.ceil((1 + (i % 12)) / 4), `slice ${i} size`);
      assert.ok(s.offset + s.size <= s.buffer.size, `slice ${i} inside its arena`);
    }
    // One dispatch per slice copies its first 4 words out: each must see its own.
    const module = ctx.device.createShaderModule({
      code: `@group(0) @binding(0) var<uniform> u: vec4<u32>;
             @group(0) @binding(1) var<storage, read_write> o: array<vec4<u32>>;
             @group(0) @binding(2) var<uniform> at: vec4<u32>;
             @compute @workgroup_size(1) fn main() { o[at.x] = u; }`,
    });
    const pipeline = await ctx.device.createComputePipelineAsync({
      layout: 'auto',
      compute: { module, entryPoint: 'main' },
    });
    const out = poisoned(owned, [n * 4], 'u32');
    await run(
      ctx,
      slices.map((s, i) => ({
        family: 'copy' as const,
        label: `u${i}`,
        pipeline,
        workgroups: [1, 1, 1] as const,
        bindGroup: ctx.device.createBindGroup({
          layout: pipeline.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { ...s, size: 16 } },
            { binding: 1, resource: binding(out) },
            { binding: 2, resource: owned.uniform(`at${i}`, [i]) },
          ],
        }),
      })),
    );
    const got = await downloadU32(ctx, out);
    for (let i = 0; i < n; i++) {
      const want = Array.from({ length: 4 }, (_, j) => (j <= i % 12 ? i * 16 + j : 0));
      assert.equal(Array.from(got.subarray(4 * i, 4 * i + 4)), want, `slice ${i}`);
    }
  });
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
  assert.throws(
    () => sleepingWaitYield(0),
    (e: Error) => e instanceof InvalidOptionError && /sliceMs must be in \(0, 50\], got 0/.test(e.message),
  );
});

test('sleepingWaitYield runs one loop: a wait that starts as the last one ends adds no second loop', async () => {
  let slices = 0;
  const y = sleepingWaitYield(1, () => slices++);
  const turns = async (n: number) => {
    for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
  };
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
  // 'auto' yields on CPU adapters only (this file also runs on GPUs, in scripts/device-check.sh)
  const auto = await createContext(nodeGPU(), { waitYield: () => undefined, yieldWhileWaiting: 'auto' });
  assert.is(auto.waitYield !== null, auto.isCpuAdapter);
  auto.destroy();
  const ctx = await createContext(nodeGPU(), { waitYield: (p) => seen.push(p), yieldWhileWaiting: true });
  try {
    assert.ok(ctx.waitYield);
    const b = ctx.createBufferWithData(
      't',
      new Uint32Array([7, 8, 9]),
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
    );
    const n0 = seen.length;
    const out = new Uint32Array(await ctx.readBuffer(b));
    assert.equal(Array.from(out), [7, 8, 9]);
    assert.is(seen.length, n0 + 1, 'one wait for the read-back');
    await ctx.drain();
    assert.is(seen.length, n0 + 2);
    await ctx.pipeline('elementwise', 'gather_rows');
    assert.is(seen.length, n0 + 3);
  } finally {
    ctx.destroy();
  }
  const off = await createContext(nodeGPU(), {
    waitYield: () => assert.unreachable('spin mode must not yield'),
    yieldWhileWaiting: false,
  });
  assert.is(off.waitYield, null);
  await off.drain();
  off.destroy();
  await rejects(
    () => createContext(nodeGPU(), { yieldWhileWaiting: 'yes' as never }),
    (e) =>
      e instanceof InvalidOptionError && /yieldWhileWaiting must be true, false or 'auto', got yes/.test(e.message),
  );
});

test('a host-provided device: the adapter is read from it, CPU waits yield, and destroy() leaves the device alive', async () => {
  const adapter = await nodeGPU().requestAdapter();
  assert.ok(adapter, 'an adapter');
  const device = await adapter!.requestDevice();
  const lost = { yes: false };
  void device.lost.then(() => {
    lost.yes = true;
  });
  let waits = 0;
  const engine = await Engine.create({
    device,
    waitYield: () => {
      waits++;
    },
  });
  const ctx = engine.ctx;
  assert.is(ctx.ownsDevice, false);
  // Described as a device the engine requested itself would be (through device.adapterInfo): on
  // lavapipe a CPU adapter, so the CPU kernel choices and the sleeping waits apply.
  const own = await context();
  assert.is(ctx.isCpuAdapter, own.isCpuAdapter, JSON.stringify(ctx.adapter));
  assert.is(ctx.adapter.description, own.adapter.description);
  assert.is(ctx.adapter.architecture, own.adapter.architecture);
  // A host device with subgroups: their size comes from device.adapterInfo too (its attributes are
  // getters, which an object spread drops: that lost it once).
  const another = await nodeGPU().requestAdapter(); // an adapter gives one device
  if (another?.features.has('subgroups')) {
    const sgDevice = await another.requestDevice({ requiredFeatures: ['subgroups'] });
    try {
      assert.is(contextFromDevice(sgDevice).features.subgroupSize, own.features.subgroupSize);
    } finally {
      sgDevice.destroy();
    }
  }
  const model = await engine.loadModel(
    randomCheckpoint(cfgOf({ n_embd: 32, n_head: 2, n_layer: 1, vocab_size: 64 }), 3),
  );
  const r = await model.generate([1, 2, 3], { maxNewTokens: 3, seed: 1, stopAtEos: false });
  assert.is(r.sequences[0]!.tokens.length, 3);
  // yieldWhileWaiting 'auto': the WaitYield sees the waits on CPU adapters only.
  if (ctx.isCpuAdapter) assert.ok(waits > 0, 'GPU waits went through the WaitYield');
  else assert.is(waits, 0);
  engine.destroy();
  assert.equal(ctx.liveBuffers, { count: 0, bytes: 0 });
  // The host's device still works: a buffer written and read back.
  const buf = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(buf, 0, new Uint32Array([7, 8, 9, 10]));
  await buf.mapAsync(GPUMapMode.READ);
  assert.equal([...new Uint32Array(buf.getMappedRange())], [7, 8, 9, 10]);
  buf.unmap();
  buf.destroy();
  await new Promise((res) => setTimeout(res, 20));
  assert.is(lost.yes, false, 'the host device was not destroyed');
  // A context on it can be made again, and bad options are named without touching the device.
  assert.throws(
    () => contextFromDevice(device, {}, { yieldWhileWaiting: 'sometimes' as never }),
    (e: Error) => e instanceof InvalidOptionError && /yieldWhileWaiting/.test(e.message),
  );
  const again = contextFromDevice(device, { description: 'my renderer' });
  assert.is(again.adapter.description, 'my renderer');
  again.destroy();
  device.destroy();
});

test.run();
