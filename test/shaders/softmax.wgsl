// Row-wise softmax and argmax over logits x [rows, V] f32 (V = 50257 for GPT-2). Test-only: the
// engine samples and takes argmaxes in the sampler (shaders/sampling.wgsl); these check the same
// reductions on their own.
//
//   softmax / softmax_inplace: y[r, i] = exp(x[r, i] - m_r) / sum_j exp(x[r, j] - m_r),
//     m_r = max_j x[r, j] (subtracting the max keeps every exp <= 1: numerically stable).
//     -inf logits (masked) give 0; a row of only -inf gives NaN (no distribution exists).
//   argmax: out[r] = the smallest i with x[r, i] = max_j x[r, j]; NaN never wins (comparisons with
//     NaN are false); a row with no non-NaN value gives 0xFFFFFFFF (outside any vocabulary, so an
//     embedding of it turns into a visible NaN row rather than a silent token 0).
//
// Work split: one workgroup of WG threads per row (rows along dispatch x, wrapped into y past
// 65535). Each thread strides over the row (i = lid, lid + WG, ...), keeping a running
// (max, sum of exp relative to that max) pair - the "online softmax" update, so the row is read
// twice (once for the statistics, once to write) instead of three times - or a (value, index)
// pair for argmax; then a tree reduction in workgroup memory merges the threads' pairs.

override WG: u32 = 256u;

struct Params {
  rows: u32,
  V: u32,
  rows_per_y: u32,     // workgroups per dispatch row (row = wg.y * rows_per_y + wg.x)
  neg_inf_bits: u32,   // 0xff800000: -inf cannot be written as a WGSL constant
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, V]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;    // [rows, V]
@group(0) @binding(3) var<storage, read_write> xy: array<f32>;   // [rows, V], in place
@group(0) @binding(4) var<storage, read_write> best: array<u32>; // [rows]

// Lowest finite f32: the running max starts here so exp(m_old - m_new) never sees inf - inf.
const LOWEST: f32 = -3.4028234663852886e38;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;

// Merges (m, s) statistics: sum of exp relative to the larger max.
fn merge_s(m1: f32, s1: f32, m2: f32, s2: f32) -> f32 {
  let m = max(m1, m2);
  return s1 * exp(m1 - m) + s2 * exp(m2 - m);
}

// Reduces every thread's (m, s) to the row's (max, sum); returns (max, 1 / sum) to every thread.
fn row_stats(m0: f32, s0: f32, lid: u32) -> vec2<f32> {
  red_m[lid] = m0;
  red_s[lid] = s0;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k = k >> 1u) {
    if (lid < k) {
      let m1 = red_m[lid];
      let m2 = red_m[lid + k];
      red_s[lid] = merge_s(m1, red_s[lid], m2, red_s[lid + k]);
      red_m[lid] = max(m1, m2);
    }
    workgroupBarrier();
  }
  return vec2<f32>(red_m[0], 1.0 / red_s[0]);
}

// This thread's online (max, sum) over its strided share of row `base`: each new value either
// adds exp(v - m) or, if it is a new max, rescales the sum by exp(m - v) and adds 1.
fn thread_stats_x(base: u32, lid: u32) -> vec2<f32> {
  var m = LOWEST;
  var s = 0.0;
  for (var i = lid; i < p.V; i += WG) {
    let v = x[base + i];
    if (v > m) { s = s * exp(m - v) + 1.0; m = v; } else { s += exp(v - m); }
  }
  return vec2<f32>(m, s);
}

fn thread_stats_xy(base: u32, lid: u32) -> vec2<f32> {
  var m = LOWEST;
  var s = 0.0;
  for (var i = lid; i < p.V; i += WG) {
    let v = xy[base + i];
    if (v > m) { s = s * exp(m - v) + 1.0; m = v; } else { s += exp(v - m); }
  }
  return vec2<f32>(m, s);
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * p.rows_per_y + wg.x;
  if (row >= p.rows) { return; }  // uniform: the whole workgroup leaves
  let base = row * p.V;
  let t = thread_stats_x(base, lid);
  let st = row_stats(t.x, t.y, lid);
  for (var i = lid; i < p.V; i += WG) { y[base + i] = exp(x[base + i] - st.x) * st.y; }
}

@compute @workgroup_size(WG)
fn softmax_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * p.rows_per_y + wg.x;
  if (row >= p.rows) { return; }
  let base = row * p.V;
  let t = thread_stats_xy(base, lid);
  let st = row_stats(t.x, t.y, lid);
  for (var i = lid; i < p.V; i += WG) { xy[base + i] = exp(xy[base + i] - st.x) * st.y; }
}

// (v2, i2) beats (v1, i1): strictly larger, or equal with a smaller index. The sentinel index
// 0xFFFFFFFF with value -inf means "nothing yet", so even -inf wins over it; NaN never wins.
fn beats(v2: f32, i2: u32, v1: f32, i1: u32) -> bool {
  return v2 > v1 || (v2 == v1 && i2 < i1);
}

@compute @workgroup_size(WG)
fn argmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * p.rows_per_y + wg.x;
  if (row >= p.rows) { return; }
  let base = row * p.V;
  var bv = bitcast<f32>(p.neg_inf_bits);
  var bi = 0xFFFFFFFFu;
  for (var i = lid; i < p.V; i += WG) {
    let v = x[base + i];
    if (beats(v, i, bv, bi)) { bv = v; bi = i; }
  }
  red_m[lid] = bv;
  red_i[lid] = bi;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k = k >> 1u) {
    if (lid < k && beats(red_m[lid + k], red_i[lid + k], red_m[lid], red_i[lid])) {
      red_m[lid] = red_m[lid + k];
      red_i[lid] = red_i[lid + k];
    }
    workgroupBarrier();
  }
  if (lid == 0u) { best[row] = red_i[0]; }
}
