// Beam-search candidates: the top K (usually 2 x beams) of
//   score[b, v] = beam_scores[b] + log_softmax(logits[b])[v]
// over all B x V, sorted by score descending, ties to the smaller flat index b * V + v.
// logits [B, V] f32, beam_scores [B] f32 -> out [K, 3] u32: (parent b, token v, f32 bits of score).
//
// Two dispatches:
//   row_topk (one 256-thread workgroup per beam row): max and sum of exp for a stable
//     log_softmax ((l - max) - log(sum exp(l - max)), f32), then the row's own top K by a radix
//     select on order-preserving u32 keys of the scores (4 passes of 8 bits, counts in workgroup
//     memory); ties at the K-th key are cut by smaller id. Writes K candidates (score bits, flat
//     index) per row to cand [B, K, 2]; rows with V < K pad with NONE.
//   merge (one workgroup): the global top K is within the union of the rows' top K (B * K
//     candidates). The same radix select finds the K-th largest key among them, then (ties at
//     that key taken by smaller flat index) a second one over the ties' flat indices; the K
//     winners go to workgroup memory, where each one's rank among them is counted (K^2) and the
//     K are written in order. Work: O(B * K + K^2) = O(B^2); counting each candidate's rank among
//     all B * K (O(B^4)) made 256 beams ~120x slower per step than 64.
// Scores are recomputed from the logits in every pass with the same expression, so every pass
// sees bit-identical values. Limits: 256 invocations, 7 KiB of workgroup memory, 4 storage
// buffers, K <= MAX_K.

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

struct Params {
  B: u32,
  V: u32,
  K: u32,
  logits_off: u32,   // element offset of row 0 inside the `logits` binding
  rows_per_y: u32,   // workgroups per dispatch row
  _p0: u32,
  _p1: u32,
  _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;       // [B, V]
@group(0) @binding(2) var<storage, read> beam_scores: array<f32>;  // [B]
@group(0) @binding(3) var<storage, read_write> cand: array<u32>;   // [B, K, 2]
@group(0) @binding(4) var<storage, read_write> out: array<u32>;    // [K, 3]

var<workgroup> h_cnt: array<atomic<u32>, 256>;
var<workgroup> s_cnt: array<u32, 256>;
var<workgroup> r_f: array<f32, 256>;
var<workgroup> w_key: u32;
var<workgroup> w_above: u32;
var<workgroup> w_eq: u32;
var<workgroup> w_tie: u32;
var<workgroup> w_slot: atomic<u32>;

// Not a const: a const-expression may not evaluate to infinity.
var<private> NEG_INF_BITS: u32 = 0xff800000u;

// f32 -> u32 with the same order; -0 is mapped to +0.
fn okey(z: f32) -> u32 {
  var b = bitcast<u32>(z);
  if (b == 0x80000000u) { b = 0u; }
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Workgroup max (is_max) or sum of x; every thread gets the result.
fn reduce(x: f32, lid: u32, is_max: bool) -> f32 {
  r_f[lid] = x;
  workgroupBarrier();
  for (var off = WG / 2u; off > 0u; off = off >> 1u) {
    if (lid < off) {
      r_f[lid] = select(r_f[lid] + r_f[lid + off], max(r_f[lid], r_f[lid + off]), is_max);
    }
    workgroupBarrier();
  }
  let r = r_f[0];
  workgroupBarrier();
  return r;
}

// Inclusive scan of s_cnt over the 256 threads.
fn scan256(lid: u32) {
  workgroupBarrier();
  for (var off = 1u; off < WG; off = off << 1u) {
    var c = 0u;
    if (lid >= off) { c = s_cnt[lid - off]; }
    workgroupBarrier();
    s_cnt[lid] = s_cnt[lid] + c;
    workgroupBarrier();
  }
}

// Radix select of the n-th largest of a set of u32 keys, shared by row_topk and merge_select: 4
// passes of 8 bits from the top. radix_begin clears the result; before pass ps the caller counts
// into h_cnt (by the key's byte (k >> radix_shift(ps)) & 0xff) every key whose bits above the pass,
// (k & radix_mask(ps)), equal w_key; radix_pick then keeps the bucket holding the n-th largest:
// w_key gains its byte, w_above counts the larger keys, w_eq the keys in the bucket. Called from
// uniform control flow (barriers).
fn radix_begin(lid: u32) {
  if (lid == 0u) {
    w_key = 0u;
    w_above = 0u;
    w_eq = 0u;
  }
}
fn radix_shift(ps: u32) -> u32 { return 24u - 8u * ps; }
fn radix_mask(ps: u32) -> u32 { return select(0xffffffffu << (radix_shift(ps) + 8u), 0u, ps == 0u); }
// Clears the counts and returns (prefix, above) for the caller's counting loop.
fn radix_open(lid: u32) -> vec2<u32> {
  atomicStore(&h_cnt[lid], 0u);
  workgroupBarrier();
  return vec2<u32>(w_key, w_above);
}
fn radix_pick(ps: u32, n: u32, pa: vec2<u32>, lid: u32) {
  workgroupBarrier();
  // Thread lid holds bucket 255 - lid: the inclusive scan runs from the largest keys down.
  let bucket = 255u - lid;
  let own = atomicLoad(&h_cnt[bucket]);
  s_cnt[lid] = own;
  scan256(lid);
  let incl = pa.y + s_cnt[lid];
  workgroupBarrier();
  if (incl >= n && incl - own < n) {
    w_key = pa.x | (bucket << radix_shift(ps));
    w_above = incl - own;
    w_eq = own;
  }
  workgroupBarrier();
}

@compute @workgroup_size(WG)
fn row_topk(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let b = wg.y * p.rows_per_y + wg.x;
  if (b >= p.B) { return; }
  let V = p.V;
  let base = p.logits_off + b * V;

  // Stable log_softmax statistics of the row.
  var mx = bitcast<f32>(NEG_INF_BITS);
  for (var v = lid; v < V; v += WG) { mx = max(mx, logits[base + v]); }
  let m = reduce(mx, lid, true);
  var s = 0.0;
  for (var v = lid; v < V; v += WG) { s += exp(logits[base + v] - m); }
  let log_s = log(reduce(s, lid, false));
  let bs = beam_scores[b];

  // Radix select of the n-th largest score key (n = min(K, V)).
  let n = min(p.K, V);
  radix_begin(lid);
  for (var ps = 0u; ps < 4u; ps++) {
    let pa = radix_open(lid);
    for (var v = lid; v < V; v += WG) {
      let k = okey(bs + ((logits[base + v] - m) - log_s));
      if ((k & radix_mask(ps)) == pa.x) { atomicAdd(&h_cnt[(k >> radix_shift(ps)) & 0xffu], 1u); }
    }
    radix_pick(ps, n, pa, lid);
  }
  let key = w_key;
  let j = n - w_above;  // ties at `key` to take, smallest ids first
  let eq = w_eq;

  // The j-th smallest id among ties: contiguous id blocks per thread, scanned in id order.
  let blk = (V + WG - 1u) / WG;
  let lo = min(lid * blk, V);
  let hi = min(lo + blk, V);
  var c = 0u;
  for (var v = lo; v < hi; v++) {
    if (okey(bs + ((logits[base + v] - m) - log_s)) == key) { c++; }
  }
  if (lid == 0u) {
    w_tie = NONE;
    atomicStore(&w_slot, 0u);
  }
  s_cnt[lid] = c;
  scan256(lid);
  if (s_cnt[lid] >= j && s_cnt[lid] - c < j) {
    var r = j - (s_cnt[lid] - c);
    for (var v = lo; v < hi; v++) {
      if (okey(bs + ((logits[base + v] - m) - log_s)) == key) {
        r--;
        if (r == 0u) { w_tie = v; break; }
      }
    }
  }
  workgroupBarrier();
  let id_lim = select(w_tie, NONE, j >= eq);

  // Exactly n tokens pass; slots are taken in any order (merge sorts them).
  let cb = b * p.K * 2u;
  for (var v = lid; v < V; v += WG) {
    let sc = bs + ((logits[base + v] - m) - log_s);
    let k = okey(sc);
    if (k > key || (k == key && v <= id_lim)) {
      let slot = atomicAdd(&w_slot, 1u);
      cand[cb + slot * 2u] = bitcast<u32>(sc);
      cand[cb + slot * 2u + 1u] = b * V + v;
    }
  }
  for (var i = n + lid; i < p.K; i += WG) {
    cand[cb + i * 2u] = 0u;
    cand[cb + i * 2u + 1u] = NONE;
  }
}

// The n-th largest key among the merge's candidates, into w_key (with w_above: how many keys are
// larger, w_eq: how many equal). by_id false: keys okey(score) of every candidate; true: keys
// ~flat index (the smallest index largest) of the candidates whose okey(score) is `key1`.
fn merge_select(total: u32, n: u32, lid: u32, by_id: bool, key1: u32) {
  radix_begin(lid);
  for (var ps = 0u; ps < 4u; ps++) {
    let pa = radix_open(lid);
    for (var i = lid; i < total; i += WG) {
      let f = cand[i * 2u + 1u];
      if (f == NONE) { continue; }
      let ks = okey(bitcast<f32>(cand[i * 2u]));
      if (by_id && ks != key1) { continue; }
      let k = select(ks, ~f, by_id);
      if ((k & radix_mask(ps)) == pa.x) { atomicAdd(&h_cnt[(k >> radix_shift(ps)) & 0xffu], 1u); }
    }
    radix_pick(ps, n, pa, lid);
  }
}

const MAX_K: u32 = 512u;
var<workgroup> m_score: array<f32, MAX_K>;
var<workgroup> m_flat: array<u32, MAX_K>;

@compute @workgroup_size(WG)
fn merge(@builtin(local_invocation_index) lid: u32) {
  let total = p.B * p.K;
  let n = min(p.K, p.B * min(p.K, p.V));  // candidates that are not padding: B rows of min(K, V)
  merge_select(total, n, lid, false, 0u);
  let key1 = w_key;
  let j = n - w_above;  // ties at key1 to take (1 <= j <= w_eq), smallest flat index first
  workgroupBarrier();   // every thread has read w_key and w_above
  merge_select(total, j, lid, true, key1);
  let key2 = w_key;     // ~(flat index of the j-th tie): ties with ~flat >= key2 are in
  if (lid == 0u) { atomicStore(&w_slot, 0u); }
  workgroupBarrier();
  for (var i = lid; i < total; i += WG) {
    let f = cand[i * 2u + 1u];
    if (f == NONE) { continue; }
    let s = bitcast<f32>(cand[i * 2u]);
    let k = okey(s);
    if (k > key1 || (k == key1 && ~f >= key2)) {
      let slot = atomicAdd(&w_slot, 1u);
      m_score[slot] = s;
      m_flat[slot] = f;
    }
  }
  workgroupBarrier();
  for (var i = lid; i < n; i += WG) {
    let si = m_score[i];
    let fi = m_flat[i];
    var rank = 0u;
    for (var q = 0u; q < n; q++) {
      let sq = m_score[q];
      if (sq > si || (sq == si && m_flat[q] < fi)) { rank++; }
    }
    out[rank * 3u] = fi / p.V;
    out[rank * 3u + 1u] = fi % p.V;
    out[rank * 3u + 2u] = bitcast<u32>(si);
  }
}
