/**
 * Node entry point: everything in the browser entry plus `nodeGPU()`, which gives a `GPU` object
 * backed by Dawn (the `webgpu` npm package). This is the only module that imports `webgpu`.
 */
import { create, globals } from 'webgpu';

export * from './index.js';

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
