/**
 * Browser-side half of test/browser.test.ts: bundled by scripts/build-browser.js into
 * dist/browser/test-page.js (loaded by test-page.html), it puts `window.gpt2test` on the page so the
 * Node test can run individual kernels on the browser's own adapter (SwiftShader in headless
 * Chromium) through page.evaluate. Inputs come from Node and outputs go back to Node, where the
 * float64 references live.
 */
import { AdapterSummary, createContext, GpuContext } from '../src/gpu/device.js';
import { Owned, GpuTensor } from '../src/gpu/common.js';
import { LayerNormKernel } from '../src/kernels/layernorm.js';
import { deviceProfile } from '../src/kernels/profile.js';

export interface BrowserTestApi {
  /** The context's adapter summary, the device's optional features and its device profile's name. */
  adapter(): Promise<{ adapter: AdapterSummary; features: GpuContext['features']; profile: string }>;
  /** Layer norm of x [rows, C] on the page's GPU; y comes back with every element written (no NaN poison left). */
  layerNorm(
    rows: number,
    C: number,
    x: number[],
    gamma: number[],
    beta: number[],
    eps: number,
  ): Promise<{ y: number[]; wg: number }>;
}

declare global {
  interface Window {
    gpt2test: BrowserTestApi;
  }
}

let shared: Promise<GpuContext> | undefined;
const context = (): Promise<GpuContext> => (shared ??= createContext(navigator.gpu));

const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

function upload(owned: Owned, data: Float32Array | Uint32Array, shape: number[]): GpuTensor {
  return {
    buffer: owned.adopt(owned.ctx.createBufferWithData('browser-test.input', data, STORAGE)),
    offset: 0,
    shape,
    dtype: 'f32',
  };
}

window.gpt2test = {
  async adapter() {
    const ctx = await context();
    return { adapter: ctx.adapter, features: ctx.features, profile: deviceProfile(ctx).name };
  },

  async layerNorm(rows, C, x, gamma, beta, eps) {
    const ctx = await context();
    const owned = new Owned(ctx);
    try {
      const k = await LayerNormKernel.create(ctx);
      // y starts as NaN everywhere so an element the kernel skips shows up in the comparison.
      const y = upload(owned, new Uint32Array(rows * C).fill(0x7fc00000), [rows, C]);
      const d = k.bind(owned, {
        x: upload(owned, Float32Array.from(x), [rows, C]),
        gamma: upload(owned, Float32Array.from(gamma), [C]),
        beta: upload(owned, Float32Array.from(beta), [C]),
        y,
        eps,
      });
      const enc = ctx.device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(...d.workgroups);
      pass.end();
      ctx.submit([enc.finish()]);
      const out = new Float32Array(await ctx.readBuffer(y.buffer, 0, rows * C * 4));
      ctx.throwIfErrors();
      return { y: Array.from(out), wg: k.wg };
    } finally {
      owned.destroy();
    }
  },
};
document.documentElement.dataset.ready = '1';
