import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { InvalidOptionError, OutOfMemoryError, ShapeError } from '../src/errors.js';
import type { GpuContext } from '../src/gpu/device.js';
import { parameterShapes } from '../src/engine/config.js';
import { randomCheckpoint } from '../src/engine/random.js';
import { GPT2Weights, uploadWeights, UploadProgress, wteRowsPerChunk } from '../src/engine/weights.js';
import type { Checkpoint } from '../src/engine/checkpoint.js';
import { storedShape, type GpuTensor } from '../src/gpu/common.js';
import { packF16 } from '../src/kernels/f16.js';
import { packPanels, packPanelsTransposed } from '../src/kernels/matmul-pack.js';
import { download, downloadU32, withDevice } from './helpers.js';
import { rejectsWith, smallConfig, tinyCheckpoint } from './fixtures-util.js';

/** Every GPU tensor of uploaded weights by HF name (wte excluded). */
function named(w: GPT2Weights): Map<string, GpuTensor> {
  const m = new Map<string, GpuTensor>([
    ['wpe.weight', w.wpe],
    ['ln_f.weight', w.ln_f.weight],
    ['ln_f.bias', w.ln_f.bias],
  ]);
  w.h.forEach((l, i) => {
    const p = `h.${i}.`;
    const pairs = {
      ln_1: l.ln_1,
      'attn.c_attn': l.attn.c_attn,
      'attn.c_proj': l.attn.c_proj,
      ln_2: l.ln_2,
      'mlp.c_fc': l.mlp.c_fc,
      'mlp.c_proj': l.mlp.c_proj,
    };
    for (const [k, v] of Object.entries(pairs)) {
      m.set(p + k + '.weight', v.weight);
      m.set(p + k + '.bias', v.bias);
    }
  });
  return m;
}

/** Reads every uploaded tensor back and checks it bit for bit against the checkpoint. */
async function checkReadBack(ctx: GpuContext, w: GPT2Weights, ck: Checkpoint): Promise<void> {
  const f16 = w.dtype === 'f16';
  // As stored: row-major, or in column panels ([panels * rows, panel]), then f16-packed.
  const expect = (vals: Float32Array, shape: number[], dt: string, panel?: number) => {
    const laid = panel ? packPanels(vals, shape[0]!, shape[1]!, panel) : vals;
    const [rows, cols] = storedShape({ shape, panel }) as [number, number];
    return dt === 'f16'
      ? Array.from(packF16(laid, rows, cols))
      : Array.from(new Uint32Array(laid.buffer, laid.byteOffset, laid.length));
  };
  const names = named(w);
  assert.is(names.size, parameterShapes(ck.config).size - 1);
  for (const [name, t] of names) {
    assert.equal(t.shape, ck.shape(name), name);
    const matrix = name === 'wpe.weight' || /c_(attn|proj|fc)\.weight$/.test(name);
    assert.is(t.dtype, matrix && f16 ? 'f16' : 'f32', `${name} dtype`);
    const got = Array.from(await downloadU32(ctx, t));
    assert.equal(got, expect(await ck.read(name), t.shape, t.dtype, t.panel), `${name} read-back`);
  }
  // wte: row chunks [n, C], or (knPanel) their transposes [C, n] in panels
  const [V, C] = ck.shape('wte.weight') as [number, number];
  let row = 0;
  for (const [i, ch] of w.wte.chunks.entries()) {
    const n = Math.min(w.wte.rowsPerChunk, V - row);
    assert.equal(ch.shape, w.wte.transposed ? [C, n] : [n, C], `chunk ${i} shape`);
    assert.is(ch.panel !== undefined, w.wte.transposed === true, `chunk ${i} paneled`);
    const rows = await ck.readRows('wte.weight', row, n);
    const want = ch.panel
      ? expect(packPanelsTransposed(rows, n, C, ch.panel), storedShape(ch), ch.dtype)
      : expect(rows, ch.shape, ch.dtype);
    assert.equal(Array.from(await downloadU32(ctx, ch)), want, `wte chunk ${i}`);
    row += n;
  }
  assert.is(row, V);
}

test('wteRowsPerChunk: all rows when they fit, else a multiple of 64 under the limit', () => {
  assert.is(wteRowsPerChunk(50257, 768, 'f32', 128 * 2 ** 20), 43648); // 134 MB limit, 3072 B rows
  assert.is(wteRowsPerChunk(50257, 768, 'f16', 128 * 2 ** 20), 50257);
  assert.is(wteRowsPerChunk(100, 9, 'f16', 1400), 64); // 20 B rows: 70 fit -> 64
  assert.is(wteRowsPerChunk(100, 9, 'f16', 1000), 50); // 50 fit: fewer than 64, keep 50
  assert.throws(
    () => wteRowsPerChunk(100, 9, 'f32', 30),
    (e: Error) => e instanceof ShapeError && /36 bytes, more than the binding limit 30/.test(e.message),
  );
  // transposed in panels: whole panels per chunk, the padded last panel counted
  assert.is(wteRowsPerChunk(50257, 768, 'f32', 128 * 2 ** 20, 256), 43520); // 170 panels of 786432 B
  assert.is(wteRowsPerChunk(50257, 768, 'f16', 128 * 2 ** 20, 256), 50257);
  assert.is(wteRowsPerChunk(100, 9, 'f32', 7 * 16 * 36, 16), 100); // 7 panels (the last 4/16 full) fit exactly
  assert.is(wteRowsPerChunk(100, 9, 'f32', 7 * 16 * 36 - 1, 16), 96);
  assert.throws(
    () => wteRowsPerChunk(100, 9, 'f32', 500, 16),
    (e: Error) =>
      e instanceof ShapeError &&
      /one panel of 16 rows x 9 f32 is 576 bytes, more than the binding limit 500; use a smaller knPanel/.test(
        e.message,
      ),
  );
});

test('f32 upload of the HF tiny model, wte split into 4 chunks, reads back exactly; destroy frees all', () =>
  withDevice(async ({ ctx }) => {
    const ck = await tinyCheckpoint();
    const before = ctx.liveBuffers;
    const seen: UploadProgress[] = [];
    const w = await uploadWeights(ctx, ck, { maxBindingBytes: 4 * 2 ** 20, onProgress: (p) => seen.push(p) });
    assert.is(w.wte.rowsPerChunk, 16384);
    assert.is(w.wte.chunks.length, 4);
    assert.is(w.wte.chunks[3]!.shape[0], 50257 - 3 * 16384);
    await checkReadBack(ctx, w, ck);
    // progress: increasing, ends at the total, which is the GPU bytes of all tensors
    const last = seen[seen.length - 1]!;
    assert.is(last.loadedBytes, last.totalBytes);
    assert.is(last.totalBytes, 13528320); // the file's data region: every tensor in f32
    assert.ok(seen.every((p, i) => i === 0 || p.loadedBytes > seen[i - 1]!.loadedBytes));
    assert.is(w.bytes, ctx.liveBuffers.bytes - before.bytes);
    assert.is(w.bytes, 13528320);
    w.destroy();
    w.destroy();
    assert.equal(ctx.liveBuffers, before);
  }));

test('f16 upload with an odd width (rows padded) and wte chunks of 64 rows reads back exactly', () =>
  withDevice(async ({ ctx }) => {
    const ck = randomCheckpoint(smallConfig({ n_embd: 9, n_head: 3 }), 3);
    const w = await uploadWeights(ctx, ck, { dtype: 'f16', maxBindingBytes: 1400 });
    assert.is(w.dtype, 'f16');
    assert.is(w.wte.rowsPerChunk, 64);
    assert.equal(
      w.wte.chunks.map((c) => c.shape[0]),
      [64, 33],
    );
    await checkReadBack(ctx, w, ck);
    // spot-check the packing decodes to the checkpoint's values within f16 rounding
    const ln = await download(ctx, w.h[1]!.ln_2.weight);
    assert.equal(Array.from(ln), Array.from(await ck.read('h.1.ln_2.weight')));
    w.destroy();
  }));

test('knPanel: the aligned Conv1D weights are stored in column panels (zero-padded), the rest plain', () =>
  withDevice(async ({ ctx }) => {
    for (const dtype of ['f32', 'f16'] as const) {
      // n_embd 24: c_attn [24, 72], c_fc [24, 96], c_proj [24, 24] / [96, 24]; panels of 16 columns
      // leave c_attn's and c_proj's last panel part-filled (72 = 4 x 16 + 8, 24 = 16 + 8).
      const ck = randomCheckpoint(smallConfig({ n_embd: 24, n_head: 3 }), 5);
      const w = await uploadWeights(ctx, ck, { dtype, knPanel: 16 });
      assert.is(w.wte.transposed, true);
      assert.equal(
        w.wte.chunks.map((c) => [c.shape, c.panel]),
        [[[24, 97], 16]],
      );
      assert.is(w.h[0]!.attn.c_attn.weight.panel, 16);
      assert.is(w.h[1]!.mlp.c_proj.weight.panel, 16);
      assert.is(w.wpe.panel, undefined);
      assert.is(w.h[0]!.attn.c_attn.weight.buffer.size, (dtype === 'f16' ? 2 : 4) * 5 * 16 * 24);
      await checkReadBack(ctx, w, ck);
      w.destroy();
    }
    // f16 rows of 9 columns are not 16-byte aligned: no GEMV reads them as panels, so none are made.
    const odd = randomCheckpoint(smallConfig({ n_embd: 9, n_head: 3 }), 3);
    const w = await uploadWeights(ctx, odd, { dtype: 'f16', knPanel: 16 });
    assert.is(w.h[0]!.attn.c_attn.weight.panel, undefined);
    await checkReadBack(ctx, w, odd);
    w.destroy();
    await rejectsWith(
      uploadWeights(ctx, odd, { knPanel: 7 }),
      InvalidOptionError,
      /knPanel must be 0 or an even integer, got 7/,
    );
  }));

test('knPanel: wte chunks of whole panels under the binding limit, each stored transposed, read back exactly', () =>
  withDevice(async ({ ctx }) => {
    for (const dtype of ['f32', 'f16'] as const) {
      // wte [97, 8]: a limit of 4 panels [8, 16] -> chunks of 64 and 33 rows (the second's last
      // panel part-filled); the largest other tensor (mlp.c_proj [32, 8] in one 16-column panel) fits.
      const ck = randomCheckpoint(smallConfig(), 8);
      const w = await uploadWeights(ctx, ck, {
        dtype,
        knPanel: 16,
        maxBindingBytes: 4 * 8 * 16 * (dtype === 'f16' ? 2 : 4),
      });
      assert.is(w.wte.rowsPerChunk, 64);
      assert.equal(
        w.wte.chunks.map((c) => c.shape),
        [
          [8, 64],
          [8, 33],
        ],
      );
      await checkReadBack(ctx, w, ck);
      w.destroy();
    }
  }));

test('a tensor over the binding limit fails before any allocation, with numbers and the f16 hint', () =>
  withDevice(async ({ ctx }) => {
    const ck = randomCheckpoint(smallConfig(), 1);
    const before = ctx.liveBuffers;
    // c_fc weight [8, 32] f32 = 1024 bytes; a 1000-byte limit cannot hold it
    await rejectsWith(
      uploadWeights(ctx, ck, { maxBindingBytes: 1000 }),
      ShapeError,
      /tensor "h\.0\.mlp\.c_fc\.weight" \[8, 32\] f32 is 1024 bytes, more than the storage binding limit 1000\. Try f16 weights \(--dtype f16\), which halve the matrices, or quantized weights \(--dtype q8 or q4\)/,
    );
    assert.equal(ctx.liveBuffers, before);
  }));

test('GPU out-of-memory mid-upload destroys what was uploaded and throws OutOfMemoryError', () =>
  withDevice(async ({ ctx }) => {
    const ck = randomCheckpoint(smallConfig(), 1);
    const before = ctx.liveBuffers;
    // A context whose device reports out-of-memory from the 10th error scope on.
    let pops = 0;
    const device = new Proxy(ctx.device, {
      get(target, key) {
        if (key === 'popErrorScope') {
          return async () => {
            const real = await target.popErrorScope();
            return ++pops >= 10 ? ({ message: 'simulated: not enough memory' } as GPUError) : real;
          };
        }
        const v = Reflect.get(target, key);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const fake = Object.create(ctx, { device: { value: device } }) as GpuContext;
    await rejectsWith(
      uploadWeights(fake, ck),
      OutOfMemoryError,
      /out of GPU memory uploading "h\.0\.ln_2\.bias" \(32 bytes\) after 4864 of 10656 weight bytes: simulated: not enough memory\. Try f16/,
    );
    assert.equal(ctx.liveBuffers, before);
  }));

test.run();
