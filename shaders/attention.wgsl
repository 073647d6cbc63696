// Causal multi-head attention over the KV cache, for prefill and decode alike.
//   qkv [T, 3C] f32: q = cols [0, C) (k and v of this step were already copied to the cache by
//     kv_write); head h uses cols [h*D, (h+1)*D), D = C / n_head.
//   k_cache, v_cache [rows, cap, C] f32: position p of row r lives at slot p % cap.
//   meta [T, 2] u32: query t belongs to row r_t at absolute position p_t.
//   out [T, C] f32: out[t, h*D + d] = sum_j softmax_j(q.k_j / sqrt(D)) v_j[d] over the n = min(p_t + 1,
//     cap) positions p_t - n + 1 .. p_t of row r_t (the ring's window; the engine keeps p_t < cap, so
//     in practice positions 0..p_t). A query whose row is >= rows gets a NaN output (defence in depth).
//
// Work split: one workgroup of WG threads per (query t, head h), any mix of rows and positions, so
// prefill (many queries of a row), multi-row prefill and decode (one query per row) share one code
// path. Keys are visited in blocks of WG with an online softmax (running max m and running sum l,
// rescaled by exp(m_old - m_new) when a block raises the max), so workgroup storage is independent
// of the capacity (any cap, 2048 included): qs[256] + acc[256] + 3 x [WG] floats, 5 KiB at WG = 256.
// Per block:
//   1. thread j scores key j of the block: s_j = (q / sqrt(D)) . k_j (q kept pre-scaled in qs);
//   2. tree max over the block -> m_new; p_j = exp(s_j - m_new) into sc;
//   3. output accumulation: the WG threads are split into parts = WG / D groups of D lanes (one lane
//      per output dimension, so reads of a v row are contiguous across lanes); part g sums keys
//      g, g + parts, ... of the block. For D > WG there is one part and each thread covers dims
//      lid, lid + WG, .... Each part keeps its own acc (parts * D <= 256 floats) and its own share
//      of l (kept by its lane d = 0); the parts are added at the end.

override WG: u32 = 64u;  // power of two (tree max), <= 256 (acc holds max(WG, MAX_D) floats)
const MAX_D: u32 = 256u;
// Lowest finite f32: the running max starts here so exp(m_old - m_new) never sees inf - inf.
const LOWEST: f32 = -3.4028234663852886e38;

struct Params {
  T: u32,
  C: u32,
  n_head: u32,
  D: u32,
  rows: u32,
  cap: u32,
  scale: f32,     // 1 / sqrt(D)
  groups_x: u32,  // workgroups along dispatch x (workgroup index = wg.y * groups_x + wg.x)
  nan_bits: u32,  // 0x7fc00000: NaN cannot be written as a WGSL constant
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;         // [T, 3C]
@group(0) @binding(2) var<storage, read> tok_meta: array<u32>;    // [T, 2] (row, pos)
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;     // [rows, cap, C]
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;     // [rows, cap, C]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;   // [T, C]

var<workgroup> qs: array<f32, MAX_D>;  // q * scale, [D]
var<workgroup> acc: array<f32, 256>;   // [parts, D] partial outputs (or [D] when D > WG)
var<workgroup> sc: array<f32, WG>;     // this block's p_j
var<workgroup> red: array<f32, WG>;    // tree-max scratch
var<workgroup> lsum: array<f32, WG>;   // [parts] partial softmax denominators

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = wg.y * p.groups_x + wg.x;
  if (w >= p.T * p.n_head) { return; }  // uniform: the whole workgroup leaves
  let t = w / p.n_head;
  let h = w - t * p.n_head;
  let D = p.D;
  let C = p.C;
  let row = tok_meta[2u * t];
  let pos = tok_meta[2u * t + 1u];
  let valid = row < p.rows;
  // Window: n positions ending at pos; every thread computes the same n, so loops stay uniform.
  let n = select(0u, min(pos + 1u, p.cap), valid);
  let first = pos + 1u - n;
  let head_base = row * p.cap * C + h * D;  // + slot * C + d

  for (var d = lid; d < D; d += WG) { qs[d] = qkv[t * 3u * C + h * D + d] * p.scale; }
  let parts = max(1u, WG / D);
  let entries = parts * D;  // acc entries in use: <= WG when D <= WG, else D
  for (var e = lid; e < entries; e += WG) { acc[e] = 0.0; }
  if (lid < parts) { lsum[lid] = 0.0; }
  workgroupBarrier();

  var m = LOWEST;
  for (var b = 0u; b < n; b += WG) {
    // 1. score key j = b + lid
    let j = b + lid;
    var s = LOWEST;
    if (j < n) {
      let kb = head_base + ((first + j) % p.cap) * C;
      var dot = 0.0;
      for (var d = 0u; d < D; d++) { dot += qs[d] * k_cache[kb + d]; }
      s = dot;
    }
    // 2. block max, new running max, probabilities relative to it
    red[lid] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
      if (lid < k) { red[lid] = max(red[lid], red[lid + k]); }
      workgroupBarrier();
    }
    let m_new = max(m, red[0]);
    let alpha = exp(m - m_new);  // rescales what was accumulated against the old max
    sc[lid] = select(0.0, exp(s - m_new), j < n);
    m = m_new;
    workgroupBarrier();
    // 3. acc[g, d] = acc[g, d] * alpha + sum over this part's keys of p_j v_j[d]
    let cnt = min(WG, n - b);
    for (var e = lid; e < entries; e += WG) {
      let g = e / D;
      let d = e - g * D;
      var a = acc[e] * alpha;
      var l = 0.0;
      for (var jj = g; jj < cnt; jj += parts) {
        let pj = sc[jj];
        a += pj * v_cache[head_base + ((first + b + jj) % p.cap) * C + d];
        l += pj;
      }
      acc[e] = a;
      if (d == 0u) { lsum[g] = lsum[g] * alpha + l; }
    }
    workgroupBarrier();  // sc and red are rewritten by the next block
  }

  // Add the parts and normalise.
  var L = 0.0;
  for (var g = 0u; g < parts; g++) { L += lsum[g]; }
  for (var d = lid; d < D; d += WG) {
    var a = 0.0;
    for (var g = 0u; g < parts; g++) { a += acc[g * D + d]; }
    out[t * C + h * D + d] = select(bitcast<f32>(p.nan_bits), a / L, valid);
  }
}
