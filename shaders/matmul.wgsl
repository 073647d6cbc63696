// Linear layers: out[M, N] = x[M, K] @ W (+ bias[N]), then optionally gelu_new, then optionally
// added to what `out` already holds (the residual add). x, bias, out are f32; W is f32 or f16 and
// is always bound as u32 words (f32: bitcast; f16: IEEE halves packed in pairs along W's last
// dimension, rows padded to an even count, read with unpack2x16float; math is f32 either way).
// Layouts: 'kn' W[K, N] (HF Conv1D), 'nk' W[N, K] (the tied LM head, possibly one chunk of rows of
// it: this dispatch then covers out columns [n_off, n_off + N) of rows of length ldo).
//
// This file holds what every matmul entry point shares: the bindings, the parameters and the
// epilogue. The entry points are in the files appended to it (the module 'matmul+<file>'):
//   matmul_gemv.wgsl        the GEMVs (decode: W read once per block of rows of x) and `reduce`;
//   matmul_gemm.wgsl        the tiled GEMM (prefill on GPUs);
//   matmul_subgroups.wgsl   gemm_kn_sg (many rows of x on CPU adapters with 4- or 8-lane subgroups).
// With split-K (flags & F_PARTIAL) a GEMV writes raw sums to dst = partials[S, M, ldo] instead of
// out, and `reduce` (x bound to the partials) applies bias / gelu / accumulate once.

override W_F16: bool = false;

const F_BIAS = 1u;
const F_GELU = 2u;
const F_ACC = 4u;
const F_PARTIAL = 8u;
const F_LN = 16u;

struct Params {
  M: u32,       // rows of x (all of them, also when z splits them into blocks)
  N: u32,       // columns this dispatch computes (rows of this W chunk for nk); reduce: columns
  K: u32,       // reduce: number of partial slices S
  wpr: u32,     // u32 words per W row; reduce: workgroups along x (for the y wrap)
  ldo: u32,     // row stride of out / partials (the full N)
  n_off: u32,   // first out column of this dispatch (chunked LM head)
  kslice: u32,  // K per slice (GEMV split-K; = K when unsplit)
  flags: u32,   // F_* bits
  pw: u32,      // gemv_kn_cols: vec4 words per panel row of a paneled W; 0 = plain row-major
  eps: f32,     // layer-norm epsilon (flags & F_LN)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [M, K]; reduce: partials [S, M, ldo]
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;   // the same x, 16-byte view
@group(0) @binding(3) var<storage, read> w: array<u32>;          // W words
@group(0) @binding(4) var<storage, read> w4: array<vec4<u32>>;   // the same W, 16-byte view
@group(0) @binding(5) var<storage, read> bias: array<f32>;       // [ldo] (any buffer when unused)
@group(0) @binding(6) var<storage, read_write> dst: array<f32>;  // out [M, ldo] or partials [S, M, ldo]
@group(0) @binding(7) var<storage, read> ln_g: array<f32>;       // [K] layer-norm gamma (flags & F_LN)
@group(0) @binding(8) var<storage, read> ln_b: array<f32>;       // [K] layer-norm beta

// GPT-2's gelu_new, 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), written as v * sigmoid(2u):
// the same function, but no tanh of a large argument (some tanh implementations return NaN there).
fn gelu_new(v: f32) -> f32 {
  let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
  return v / (1.0 + exp(min(-2.0 * u, 80.0)));
}

// Stores the sum `v` for row m, column n of this dispatch (slice s when writing partials).
fn finish(m: u32, n: u32, s: u32, v: f32) {
  let col = p.n_off + n;
  if ((p.flags & F_PARTIAL) != 0u) {
    dst[(s * p.M + m) * p.ldo + col] = v;
    return;
  }
  var r = v;
  if ((p.flags & F_BIAS) != 0u) { r += bias[col]; }
  if ((p.flags & F_GELU) != 0u) { r = gelu_new(r); }
  let i = m * p.ldo + col;
  if ((p.flags & F_ACC) != 0u) { r += dst[i]; }  // read and write through the one binding
  dst[i] = r;
}

// W[row, col] as f32 from the scalar view, 0 outside [rows, cols] of the stored matrix.
fn w_elem(row: u32, col: u32, cols: u32, rows: u32) -> f32 {
  if (row >= rows || col >= cols) { return 0.0; }
  if (W_F16) {
    let pair = unpack2x16float(w[row * p.wpr + (col >> 1u)]);
    return select(pair.x, pair.y, (col & 1u) == 1u);
  }
  return bitcast<f32>(w[row * p.wpr + col]);
}
