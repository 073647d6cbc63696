// The WebGPU types (GPUDevice, GPUBuffer...) the declarations use: kept in the emitted .d.ts
// (preserve), so a TypeScript consumer gets them from the @webgpu/types dependency unasked.
/// <reference types="@webgpu/types" preserve="true" />
/**
 * Node entry point: everything in the browser entry plus `nodeGPU()` (a `GPU` backed by Dawn, the
 * `webgpu` npm package) and `createEngine()`, whose loader also takes local directories and
 * Hugging Face ids (downloaded into the standard HF cache). The only modules importing Node
 * built-ins or `webgpu` are this one, node-sources.ts and cli.ts.
 */
import { create, globals } from 'webgpu';
import { Engine } from './engine/engine.js';
import { ENGINE_OPTIONS, type EngineOptions } from './engine/engine-options.js';
import { checkOptions } from './sampling/names.js';
import { createContext, type ContextOptions, type GpuContext, type WaitYield } from './gpu/device.js';
import { InvalidOptionError } from './errors.js';
import { resolveSource } from './node-sources.js';

export * from './index.js';
export { resolveSource } from './node-sources.js';

let gpu: GPU | undefined;

/** The process-wide Dawn `GPU` object; also installs WebGPU globals (GPUBufferUsage...) once. */
export function nodeGPU(): GPU {
  if (!gpu) {
    Object.assign(globalThis, globals);
    if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';
    gpu = create([]) as GPU;
  }
  return gpu;
}

/**
 * A WaitYield for dawn.node (see src/engine/device.ts): while any GPU wait is pending, a
 * setImmediate loop sleeps the main thread `sliceMs` at a time with Atomics.wait, between the
 * polls dawn.node itself schedules with setImmediate. The thread then mostly sleeps instead of
 * spinning, and a software adapter's worker threads get both cores of a small machine; a wait
 * ends at most `sliceMs` late (0.5 ms: a 20 ms decode step loses ~0.25 ms on average, not the 1 ms of
 * 2 ms slices; BENCHMARKS.md, decision log). The event loop stalls for up to `sliceMs` per turn
 * while waiting. `sleep` is injectable for tests.
 */
export function sleepingWaitYield(sliceMs = 0.5, sleep: (ms: number) => void = atomicsSleep()): WaitYield {
  if (!(sliceMs > 0 && sliceMs <= 50))
    throw new InvalidOptionError(`sleepingWaitYield: sliceMs must be in (0, 50], got ${sliceMs}`);
  let pending = 0;
  // At most one loop: a wait that starts while the last loop's final tick is still queued must not
  // start a second one (loops would pile up, each adding a slice to every turn).
  let looping = false;
  const tick = (): void => {
    if (pending === 0) {
      looping = false;
      return;
    }
    sleep(sliceMs);
    setImmediate(tick);
  };
  return (p) => {
    pending++;
    if (!looping) {
      looping = true;
      setImmediate(tick);
    }
    const done = (): void => {
      pending--;
    };
    p.then(done, done);
  };
}

function atomicsSleep(): (ms: number) => void {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  return (ms) => {
    Atomics.wait(cell, 0, 0, ms);
  };
}

/** A GpuContext on Dawn, with GPU waits sleeping in slices on CPU adapters (see createEngine). */
export function nodeContext(opts: Omit<ContextOptions, 'waitYield'> = {}): Promise<GpuContext> {
  return createContext(nodeGPU(), { waitYield: sleepingWaitYield(), ...opts });
}

/**
 * An Engine on Dawn that loads random:, local directories and Hugging Face ids. On a CPU adapter
 * GPU waits sleep the main thread in slices (`sleepingWaitYield`; `yieldWhileWaiting: false` keeps
 * dawn.node's spinning wait, true uses slices on any adapter).
 */
export async function createEngine(opts: Omit<EngineOptions, 'gpu'> = {}): Promise<Engine> {
  checkOptions(opts, ENGINE_OPTIONS, 'engine option'); // here too: a spread would let null through
  return Engine.create({
    gpu: nodeGPU(),
    waitYield: sleepingWaitYield(),
    resolveSource: (source, o) => {
      const cb = o.onProgress;
      return resolveSource(source, {
        ...o.download,
        onProgress: cb && ((p) => cb({ phase: 'download', loaded: p.loadedBytes, total: p.totalBytes })),
      });
    },
    ...opts,
  });
}
