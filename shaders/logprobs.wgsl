// Token log-probabilities over logits x [rows, V] f32, for scoring text without reading the
// logits back: per row r, with lse_r = log(sum_j exp(x[r, j])) (max subtracted first),
//   out[r, 0] = x[r, target_r] - lse_r                (f32 bits; NaN bits when target_r = NONE)
//   out[r, 1] = argmax_j x[r, j]                       (u32; ties to the smaller id, as torch.argmax)
//   out[r, 2 + 2i], out[r, 3 + 2i] = id and log-prob of the row's i-th most likely token, i < N
//                                                       (order: log-prob descending, id ascending)
// so a row costs (2 + 2N) words of read-back instead of V.
//
// Work split: one workgroup of WG threads per row (rows along dispatch x, wrapped into y past
// 65535). Thread t owns the ids v = t (mod WG) and reads them once, keeping an online
// (max, sum of exp) pair and its own sorted top-K list (K = max(N, 1), at most MAX_TOP, in private
// memory; ids arrive ascending, so "strictly larger" keeps ties on the smaller id). A tree
// reduction merges the (max, sum) pairs; then K rounds of a (value, id) tree reduction over the
// threads' list heads pick the row's top K in order: the winning id names its owner thread
// (id mod WG), which advances its head. NaN never enters a list (comparisons with NaN are false).

override WG: u32 = 256u;
const MAX_TOP: u32 = 20u;
const NONE: u32 = 0xffffffffu;
// Lowest finite f32: the running max starts here so exp(m_old - m_new) never sees inf - inf.
const LOWEST: f32 = -3.4028234663852886e38;

struct Params {
  rows: u32,
  V: u32,
  rows_per_y: u32,   // workgroups per dispatch row (row = wg.y * rows_per_y + wg.x)
  top: u32,          // N, the alternatives written per row (0..MAX_TOP)
  neg_inf_bits: u32, // 0xff800000: -inf cannot be written as a WGSL constant
  nan_bits: u32,     // 0x7fc00000
  _p0: u32,
  _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;            // [rows, V]
@group(0) @binding(2) var<storage, read> targets: array<u32>;      // [rows], NONE = no target
@group(0) @binding(3) var<storage, read_write> out: array<u32>;    // [rows, 2 + 2 * top]

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;

var<private> top_v: array<f32, MAX_TOP>;
var<private> top_i: array<u32, MAX_TOP>;

// (v2, i2) beats (v1, i1): strictly larger, or equal with a smaller id. The sentinel (-inf, NONE)
// loses to every real value, -inf included; NaN never wins.
fn beats(v2: f32, i2: u32, v1: f32, i1: u32) -> bool {
  return v2 > v1 || (v2 == v1 && i2 < i1);
}

// Inserts (v, i) into this thread's sorted list of k entries if it beats the last one.
fn offer(v: f32, i: u32, k: u32) {
  if (!beats(v, i, top_v[k - 1u], top_i[k - 1u])) { return; }
  var j = k - 1u;
  while (j > 0u && beats(v, i, top_v[j - 1u], top_i[j - 1u])) {
    top_v[j] = top_v[j - 1u];
    top_i[j] = top_i[j - 1u];
    j--;
  }
  top_v[j] = v;
  top_i[j] = i;
}

// The row's log-sum-exp from every thread's (m, s); the same value in every thread.
fn row_lse(m0: f32, s0: f32, lid: u32) -> f32 {
  red_m[lid] = m0;
  red_s[lid] = s0;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k = k >> 1u) {
    if (lid < k) {
      let m1 = red_m[lid];
      let m2 = red_m[lid + k];
      let m = max(m1, m2);
      red_s[lid] = red_s[lid] * exp(m1 - m) + red_s[lid + k] * exp(m2 - m);
      red_m[lid] = m;
    }
    workgroupBarrier();
  }
  let lse = red_m[0] + log(red_s[0]);
  workgroupBarrier();  // red_m is reused by the rounds below
  return lse;
}

// One merge round: the best list head over the workgroup, as (value, id) in red_m[0], red_i[0].
fn best_head(v: f32, i: u32, lid: u32) {
  red_m[lid] = v;
  red_i[lid] = i;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k = k >> 1u) {
    if (lid < k && beats(red_m[lid + k], red_i[lid + k], red_m[lid], red_i[lid])) {
      red_m[lid] = red_m[lid + k];
      red_i[lid] = red_i[lid + k];
    }
    workgroupBarrier();
  }
}

@compute @workgroup_size(WG)
fn logprobs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * p.rows_per_y + wg.x;
  if (row >= p.rows) { return; }  // uniform: the whole workgroup leaves
  let neg_inf = bitcast<f32>(p.neg_inf_bits);
  let k = max(min(p.top, MAX_TOP), 1u);
  for (var j = 0u; j < MAX_TOP; j++) {
    top_v[j] = neg_inf;
    top_i[j] = NONE;
  }
  let base = row * p.V;
  var m = LOWEST;
  var s = 0.0;
  for (var v = lid; v < p.V; v += WG) {
    let xv = x[base + v];
    if (xv > m) { s = s * exp(m - xv) + 1.0; m = xv; } else { s += exp(xv - m); }
    offer(xv, v, k);
  }
  let lse = row_lse(m, s, lid);

  let stride = 2u + 2u * p.top;
  let o = row * stride;
  var head = 0u;
  for (var r = 0u; r < k; r++) {
    var hv = neg_inf;
    var hi = NONE;
    if (head < k) { hv = top_v[head]; hi = top_i[head]; }
    best_head(hv, hi, lid);
    let wv = red_m[0];
    let wi = red_i[0];
    workgroupBarrier();  // every thread has read the winner before the next round overwrites it
    if (wi != NONE && wi % WG == lid) { head++; }
    if (lid == 0u) {
      if (r == 0u) { out[o + 1u] = wi; }
      if (r < p.top) {
        out[o + 2u + 2u * r] = wi;
        out[o + 3u + 2u * r] = bitcast<u32>(wv - lse);
      }
    }
  }
  if (lid == 0u) {
    let t = targets[row];
    var lp = bitcast<f32>(p.nan_bits);
    if (t < p.V) { lp = x[base + t] - lse; }
    out[o] = bitcast<u32>(lp);
  }
}
