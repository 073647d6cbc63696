// Linear layers: out[M, N] = x[M, K] @ W (+ bias[N]), then optionally gelu_new, then optionally
// added to what `out` already holds (the residual add). x, bias, out are f32; W is stored as
// W_FMT says and is always bound as u32 words: 0 f32 (bitcast), 1 f16 (IEEE halves packed in pairs
// along W's last dimension, read with unpack2x16float), 2 q8 / 3 q4 (signed 8- / 4-bit integers,
// 4 / 8 per word along the last dimension, two's complement; src/kernels/quant.ts). Rows are
// padded to whole words. Math is f32 whatever the storage.
// q8 has one scale per output column, applied to the column's sum in `finish`; q4 one per group
// of 32 k of a column (scl [G, sld]), applied where the kernel knows k: per element (w_qs,
// w_qs8), or per group of k on the CPU adapters' GEMVs.
// Layouts: 'kn' W[K, N] (HF Conv1D), 'nk' W[N, K] (the tied LM head, possibly one chunk of rows of
// it: this dispatch then covers out columns [n_off, n_off + N) of rows of length ldo).
//
// This file holds what every matmul entry point shares: the bindings, the parameters, the weight
// loads and the epilogue. The entry points are in the files appended to it (the module
// 'matmul+<file>'):
//   matmul_gemv.wgsl        the GEMVs (decode: W read once per block of rows of x) and `reduce`;
//   matmul_gemm.wgsl        the tiled GEMM (prefill on GPUs);
//   matmul_subgroups.wgsl   gemm_kn_sg (many rows of x on CPU adapters with 4- or 8-lane subgroups).
// With split-K (flags & F_PARTIAL) a GEMV writes raw sums to dst = partials[S, M, ldo] instead of
// out, and `reduce` (x bound to the partials) applies bias / gelu / accumulate once.
//
// The vector kernels read W in units along its last dimension: 4 elements (f32: one vec4<u32>) or
// 8 (f16: one vec4<u32>; q8: two words; q4: one word), through w_unit.

override W_FMT: u32 = 0u;  // 0 f32, 1 f16, 2 q8, 3 q4

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
  pw: u32,      // gemv_kn_cols, gemm_kn_sg: units per panel row of a paneled W; 0 = plain row-major
  eps: f32,     // layer-norm epsilon (flags & F_LN)
  sld: u32,     // q8 / q4: row stride of scl (this dispatch's columns, padded to a multiple of 8)
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
@group(0) @binding(9) var<storage, read> scl: array<vec4<f32>>;  // q8 [1, sld] / q4 [G, sld] scales (any buffer otherwise)

// Whether a unit holds 8 elements (f16, q8, q4) rather than 4 (f32).
fn w_wide() -> bool { return W_FMT != 0u; }
// u32 words per unit, and elements per u32 word.
fn w_uw() -> u32 { return select(select(4u, 2u, W_FMT == 2u), 1u, W_FMT == 3u); }
fn w_epw() -> u32 { return 1u << W_FMT; }
// Units per W row (p.wpr counts u32 words; a paneled W's counts whole units of every panel).
fn w_upr() -> u32 { return p.wpr / w_uw(); }

// Integer units: the kernels decode a q8 / q4 integer q as q * Q8_UNIT / q * Q4_UNIT, by moving
// its bits to the top of a word and masking the rest (a shift and an and, or only one of them)
// instead of sign-extending it (two shifts), and fold 1 / UNIT into the scales they multiply by
// (`finish` for q8, w_qs / w_qs8 for q4). A power of two: every product and sum is the plain
// integer one times it, exactly (far from f32's range limits), so the results are unchanged.
const Q8_UNIT = 16777216.0;   // 2^24
const Q4_UNIT = 268435456.0;  // 2^28

// The 4 signed bytes of `v` (times Q8_UNIT), and 4 signed nibbles of `v` from bit `b` (b 0 or 16;
// times Q4_UNIT), as f32.
fn q8x4(v: u32) -> vec4<f32> {
  let t = vec4<u32>(v << 24u, v << 16u, v << 8u, v) & vec4<u32>(0xff000000u);
  return vec4<f32>(bitcast<vec4<i32>>(t));
}
fn q4x4(v: u32, b: u32) -> vec4<f32> {
  let t = vec4<u32>(v << (28u - b), v << (24u - b), v << (20u - b), v << (16u - b)) & vec4<u32>(0xf0000000u);
  return vec4<f32>(bitcast<vec4<i32>>(t));
}

struct WUnit {
  lo: vec4<f32>,  // elements 0..3 of the unit
  hi: vec4<f32>,  // elements 4..7 (0 for f32)
}

// Unit u of W (unit index: u32 word u * w_uw()), unscaled (q8 / q4: in their UNITs): where W's
// storage is decoded (with w_elem, and gemv_kn_cols's wide loads of the same words).
fn w_unit(u: u32) -> WUnit {
  if (W_FMT == 2u) { return WUnit(q8x4(w[2u * u]), q8x4(w[2u * u + 1u])); }
  if (W_FMT == 3u) { let v = w[u]; return WUnit(q4x4(v, 0u), q4x4(v, 16u)); }
  let q = w4[u];
  if (W_FMT == 1u) {
    return WUnit(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)),
                 vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)));
  }
  return WUnit(bitcast<vec4<f32>>(q), vec4<f32>(0.0));
}

// The q4 scale of (k, output column n of this dispatch), over Q4_UNIT; 1 for the other formats
// (q8's is applied in `finish`). Clamped into the binding (the GEMM's tile edges ask past N).
fn w_qs(k: u32, n: u32) -> f32 {
  if (W_FMT != 3u) { return 1.0; }
  let i = min((k / 32u) * p.sld + n, arrayLength(&scl) * 4u - 1u);
  return scl[i / 4u][i % 4u] * (1.0 / Q4_UNIT);
}

// The q4 scales of (k, output columns n0 .. n0 + 7), n0 a multiple of 8 below sld, over Q4_UNIT;
// ones otherwise.
fn w_qs8(k: u32, n0: u32) -> WUnit {
  if (W_FMT != 3u) { return WUnit(vec4<f32>(1.0), vec4<f32>(1.0)); }
  let i = ((k / 32u) * p.sld + n0) / 4u;
  return WUnit(scl[i] * (1.0 / Q4_UNIT), scl[i + 1u] * (1.0 / Q4_UNIT));
}

// GPT-2's gelu_new, 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), written as v * sigmoid(2u):
// the same function, but no tanh of a large argument (some tanh implementations return NaN there).
fn gelu_new(v: f32) -> f32 {
  let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
  return v / (1.0 + exp(min(-2.0 * u, 80.0)));
}

// Stores the sum `v` for row m, column n of this dispatch (slice s when writing partials).
fn finish(m: u32, n: u32, s: u32, v0: f32) {
  let col = p.n_off + n;
  var v = v0;
  if (W_FMT == 2u) { v *= scl[n / 4u][n % 4u] * (1.0 / Q8_UNIT); }  // q8: the column's scale (before any split-K partial)
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

// W[row, col] as f32 from the scalar view, unscaled (q8 / q4: in their UNITs; q4: times w_qs), 0
// outside [rows, cols] of the stored matrix.
fn w_elem(row: u32, col: u32, cols: u32, rows: u32) -> f32 {
  if (row >= rows || col >= cols) { return 0.0; }
  let e = w_epw();
  let word = w[row * p.wpr + col / e];
  let j = col % e;
  if (W_FMT == 1u) {
    let pair = unpack2x16float(word);
    return select(pair.x, pair.y, j == 1u);
  }
  if (W_FMT >= 2u) {  // element j at the top of the word, the bits below it cleared
    let bits = 32u / e;
    return f32(bitcast<i32>((word << (32u - bits * (j + 1u))) & ~((1u << (32u - bits)) - 1u)));
  }
  return bitcast<f32>(word);
}
