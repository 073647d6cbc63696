/**
 * Node entry point: everything in the browser entry plus `nodeGPU()` (a `GPU` backed by Dawn, the
 * `webgpu` npm package) and `createEngine()`, whose loader also takes local directories and
 * Hugging Face ids (downloaded into the standard HF cache). The only modules importing Node
 * built-ins or `webgpu` are this one, node-sources.ts and cli.ts.
 */
import { create, globals } from 'webgpu';
import { Engine, type EngineOptions } from './engine/engine.js';
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

/** An Engine on Dawn that loads random:, local directories and Hugging Face ids. */
export function createEngine(opts: Omit<EngineOptions, 'gpu'> = {}): Promise<Engine> {
  return Engine.create({
    gpu: nodeGPU(),
    resolveSource: (source, o) => {
      const cb = o.onProgress;
      return resolveSource(source, { onProgress: cb && ((p) => cb({ phase: 'download', loaded: p.loadedBytes, total: p.totalBytes })) });
    },
    ...opts,
  });
}
