// Causal multi-head attention over the KV cache, for prefill and decode alike.
//   qkv [T, 3C] f32: q = cols [0, C), head h uses cols [h*D, (h+1)*D), D = C / n_head. The keys
//     and values of this step, cols [C, 2C) and [2C, 3C), are in the cache already (kv_write ran
//     first), or, with write_kv = 1 (decode: every token of the step in a row of its own), main /
//     main_vec4 copy them there themselves: the workgroup of (token t, head h) writes head h's
//     slice of t's key and value to t's slot, then a storageBarrier, then attends. No other
//     workgroup reads that slice of that row (each reads its own token's row and head), so no
//     cross-workgroup ordering is needed, and the step saves its kv_write dispatch.
//   k_cache, v_cache [rows, cap, C] f32: position p of row r lives at slot p % cap.
//   meta [T, 2] u32: query t belongs to row r_t at absolute position p_t.
//   out [T, C] f32: out[t, h*D + d] = sum_j softmax_j(q.k_j / sqrt(D)) v_j[d] over the n = min(p_t + 1,
//     cap) positions p_t - n + 1 .. p_t of row r_t (the ring's window; the engine keeps p_t < cap, so
//     in practice positions 0..p_t). A query whose row is >= rows gets a NaN output (defence in depth).
//
// Entry points (the TS module picks): main (scalar loads, any D), main_vec4 (the same with
// vec4 loads, D % 4 == 0), decode_lanes (CPU adapters: one invocation per token and head, no
// barriers), prefill_lanes (CPU adapters: one per pair of tokens and head, sharing K/V loads),
// att_qt + att_scores + att_softmax + att_pv (CPU adapters, long prompts: the two products as
// matrix products through scratch buffers) and tiled_vec4 (GPU prompts: 8 tokens of one row per
// workgroup, at the end). CPU adapters whose subgroups hold 4+ invocations take decode_sg and
// prefill_sg instead of the lanes, pairs and blocks kernels (shaders/attention_subgroups.wgsl,
// appended to this file as the module 'attention+attention_subgroups').
// main_vec4 is built at WG = 32 and, for GPU decode steps, at a wider WG (256 by default): a
// decode step has only rows x n_head (token, head) pairs, 12 workgroups for gpt2 at batch 1, each
// walking its window in blocks of KB = 4 WG keys; at WG 32 a 1024-key window is 8 dependent
// blocks on one warp of 12 SMs, at WG 256 one block with 8 warps to hide the loads' latency.
//
// Work split of main / main_vec4: one workgroup of WG threads per (query t, head h), any mix of
// rows and positions, so prefill (many queries of a row), multi-row prefill and decode (one query
// per row) share one code path. Keys are visited in blocks of KB = KPT * WG with an online softmax (running max m and
// running sum l, rescaled by alpha = exp(m_old - m_new) when a block raises the max), so workgroup
// storage does not depend on the capacity (any cap, 2048 included): qs + acc (1 KiB each),
// sc + koff (KB words each) and red + lsum (WG words each): 3.25 KiB at WG = 32, 12 KiB at 256.
// Per block (3 + log2(WG) barriers):
//   1. thread lid scores keys lid, lid + WG, ... (KPT of them): s_j = (q / sqrt(D)) . k_j (q kept
//      pre-scaled in qs), records each key's cache offset in koff (the ring's slot arithmetic is
//      done once per key, with no integer division) and its own maximum in red;
//   2. tree max over the WG maxima -> m_new (on lavapipe log2(WG) cheap barriers beat every
//      thread scanning all WG values); p_j = exp(s_j - m_new) into sc;
//   3. output accumulation: the WG threads are split into parts = WG / D groups of D lanes (one lane
//      per output dimension, so the lanes of a part read a v row contiguously); part g sums keys
//      g, g + parts, ... of the block. For D > WG there is one part and each thread covers dims
//      lid, lid + WG, .... Each part keeps its own acc (parts * D <= 256 floats) and its own share
//      of l (kept by its lane d = 0); the parts are added at the end.
// main_vec4 (below) is the same with 4 dimensions per load, used when D % 4 == 0.

override WG: u32 = 32u;  // power of two (tree max), <= 256 (acc holds max(WG, MAX_D) floats)
const KPT: u32 = 4u;     // keys each thread scores per block
override KB: u32 = WG * KPT;  // keys per block
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
  tiled_skip: u32,  // 1: main_vec4 skips tokens whose tile tiled_vec4 handles (see below)
  write_kv: u32,    // 1: main / main_vec4 copy the token's k, v (head h) to its cache slot first
  pairs_skip: u32,  // 1: decode_lanes skips tokens whose pair prefill_lanes handles, 2: whose block att_scores / att_pv handle
  t_base: u32,      // att_qt / att_scores / att_softmax / att_pv: the chunk's first token (a multiple of QB)
  tc: u32,          // tokens per chunk (a multiple of QB): the minor size of qts and st
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;         // [T, 3C]
@group(0) @binding(2) var<storage, read> tok_meta: array<u32>;    // [T, 2] (row, pos)
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;  // [rows, cap, C] (written only with write_kv)
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;  // [rows, cap, C]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;   // [T, C]

var<workgroup> qs: array<f32, MAX_D>;  // q * scale, [D]
var<workgroup> acc: array<f32, 256>;   // [parts, D] partial outputs (or [D] when D > WG)
var<workgroup> sc: array<f32, KB>;     // this block's p_j
var<workgroup> red: array<f32, WG>;    // the threads' maxima of their block scores
var<workgroup> lsum: array<f32, WG>;   // [parts] partial softmax denominators
var<workgroup> koff: array<u32, KB>;   // this block's key offsets in the caches (slot * C + head)

// Step 2 of a key block, shared by main and attend_vec4 (the whole workgroup calls it, in uniform
// control flow: it has barriers): the block's max of the lanes' maxima `tm` (a tree over red[WG]),
// the new running max m_new = max(m, block max), and each key's probability against it into
// sc[jl] = exp(s[i] - m_new) for key b + jl (jl = lid + i * WG; 0 past the window's n keys).
// Returns (m_new, alpha = exp(m - m_new)), alpha rescaling what was accumulated against m.
fn block_probs(lid: u32, s: array<f32, KPT>, tm: f32, m: f32, b: u32, n: u32) -> vec2<f32> {
  red[lid] = tm;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k = k >> 1u) {
    if (lid < k) { red[lid] = max(red[lid], red[lid + k]); }
    workgroupBarrier();
  }
  let m_new = max(m, red[0]);
  for (var i = 0u; i < KPT; i++) {
    let jl = lid + i * WG;
    sc[jl] = select(0.0, exp(s[i] - m_new), b + jl < n);
  }
  workgroupBarrier();  // sc complete, and red[0] read by every lane before the next block rewrites it
  return vec2<f32>(m_new, exp(m - m_new));
}

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
  // Slot of the window's first position; slots then run on, wrapping once at cap (n <= cap), so
  // no integer division is needed per key (costly where it is emulated, e.g. on CPUs).
  let first_slot = (pos + 1u - n) % p.cap;
  let head_base = row * p.cap * C + h * D;  // + slot * C + d

  for (var d = lid; d < D; d += WG) { qs[d] = qkv[t * 3u * C + h * D + d] * p.scale; }
  if (p.write_kv == 1u && valid) {
    let dst = head_base + (pos % p.cap) * C;
    for (var d = lid; d < D; d += WG) {
      k_cache[dst + d] = qkv[t * 3u * C + C + h * D + d];
      v_cache[dst + d] = qkv[t * 3u * C + 2u * C + h * D + d];
    }
  }
  storageBarrier();  // the writes above before the key loop reads them
  let parts = max(1u, WG / D);
  let entries = parts * D;  // acc entries in use: <= WG when D <= WG, else D
  for (var e = lid; e < entries; e += WG) { acc[e] = 0.0; }
  if (lid < parts) { lsum[lid] = 0.0; }
  workgroupBarrier();

  var m = LOWEST;
  for (var b = 0u; b < n; b += KB) {
    // 1. score keys b + lid + i * WG, i < KPT; this thread's max of them
    var s: array<f32, KPT>;
    var tm = LOWEST;
    for (var i = 0u; i < KPT; i++) {
      let jl = lid + i * WG;
      s[i] = LOWEST;
      if (b + jl < n) {
        let slot = first_slot + b + jl;
        let kb = head_base + (slot - select(0u, p.cap, slot >= p.cap)) * C;
        koff[jl] = kb;
        var dot = 0.0;
        for (var d = 0u; d < D; d++) { dot += qs[d] * k_cache[kb + d]; }
        s[i] = dot;
        tm = max(tm, dot);
      }
    }
    // 2. block max, new running max, this block's probabilities against it (into sc)
    let ma = block_probs(lid, s, tm, m, b, n);
    let alpha = ma.y;  // rescales what was accumulated against the old max
    m = ma.x;
    // 3. acc[g, d] = acc[g, d] * alpha + sum over this part's keys of p_j v_j[d]
    let cnt = min(KB, n - b);
    for (var e = lid; e < entries; e += WG) {
      let g = e / D;
      let d = e - g * D;
      var a = acc[e] * alpha;
      var l = 0.0;
      for (var jj = g; jj < cnt; jj += parts) {
        let pj = sc[jj];
        a += pj * v_cache[koff[jj] + d];
        l += pj;
      }
      acc[e] = a;
      if (d == 0u) { lsum[g] = lsum[g] * alpha + l; }
    }
    workgroupBarrier();  // sc, koff and red are rewritten by the next block
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

// ---- vec4 variant: the same algorithm with 4 dimensions per load, for D % 4 == 0 (every GPT-2
// size has D = 64). Head and slot offsets are then multiples of 4, so qkv, the caches and out are
// read as arrays of vec4 (a quarter of the load instructions and index computations). In step 3
// a lane owns 4 output dimensions: parts = WG / (D / 4) groups (16 lanes each for D = 64).

@group(0) @binding(1) var<storage, read> qkv4: array<vec4<f32>>;        // [T, 3C / 4]
@group(0) @binding(3) var<storage, read_write> k4: array<vec4<f32>>;    // [rows, cap, C / 4]
@group(0) @binding(4) var<storage, read_write> v4: array<vec4<f32>>;    // [rows, cap, C / 4]
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;  // [T, C / 4]

// acc4 holds [parts, D / 4] with parts = max(1, WG / (D / 4)): WG entries when D / 4 <= WG, else
// D / 4 <= 64; sized for the widest WG, 256 (4 KiB). (Sized by an override `max(WG, 64u)` it
// failed the WG 256 tests on Dawn 0.6.2 / lavapipe, while `WG * 2u` passed and a small shader
// with the same `max` declaration worked; not pinned down, so a fixed size.)
var<workgroup> qs4: array<vec4<f32>, 64>;    // q * scale, [D / 4]
var<workgroup> acc4: array<vec4<f32>, 256>;  // [parts, D / 4]

@compute @workgroup_size(WG)
fn main_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = wg.y * p.groups_x + wg.x;
  if (w >= p.T * p.n_head) { return; }  // uniform: the whole workgroup leaves
  let t = w / p.n_head;
  if (p.tiled_skip == 1u && tile_qualifies(t / QT)) { return; }  // uniform: t is
  attend_vec4(t, w - t * p.n_head, lid);
}

// Query t, head h, by the whole workgroup (called in uniform control flow).
fn attend_vec4(t: u32, h: u32, lid: u32) {
  let D4 = p.D / 4u;
  let C4 = p.C / 4u;
  let row = tok_meta[2u * t];
  let pos = tok_meta[2u * t + 1u];
  let valid = row < p.rows;
  let n = select(0u, min(pos + 1u, p.cap), valid);
  let first_slot = (pos + 1u - n) % p.cap;
  let head_base = row * p.cap * C4 + h * D4;  // + slot * C4 + d4

  workgroupBarrier();  // a previous call (tiled fallback) may still be reading qs4, acc4, lsum
  for (var d = lid; d < D4; d += WG) { qs4[d] = qkv4[t * 3u * C4 + h * D4 + d] * p.scale; }
  if (p.write_kv == 1u && valid) {
    let dst = head_base + (pos % p.cap) * C4;
    for (var d = lid; d < D4; d += WG) {
      k4[dst + d] = qkv4[t * 3u * C4 + C4 + h * D4 + d];
      v4[dst + d] = qkv4[t * 3u * C4 + 2u * C4 + h * D4 + d];
    }
  }
  storageBarrier();  // the writes above before the key loop reads them
  let parts = max(1u, WG / D4);
  let entries = parts * D4;
  for (var e = lid; e < entries; e += WG) { acc4[e] = vec4<f32>(0.0); }
  if (lid < parts) { lsum[lid] = 0.0; }
  workgroupBarrier();

  var m = LOWEST;
  for (var b = 0u; b < n; b += KB) {
    var s: array<f32, KPT>;
    var tm = LOWEST;
    for (var i = 0u; i < KPT; i++) {
      let jl = lid + i * WG;
      s[i] = LOWEST;
      if (b + jl < n) {
        let slot = first_slot + b + jl;
        let kb = head_base + (slot - select(0u, p.cap, slot >= p.cap)) * C4;
        koff[jl] = kb;
        var dot4 = vec4<f32>(0.0);
        for (var d = 0u; d < D4; d++) { dot4 += qs4[d] * k4[kb + d]; }
        let sc_ = dot4.x + dot4.y + dot4.z + dot4.w;
        s[i] = sc_;
        tm = max(tm, sc_);
      }
    }
    let ma = block_probs(lid, s, tm, m, b, n);
    let alpha = ma.y;
    m = ma.x;
    let cnt = min(KB, n - b);
    for (var e = lid; e < entries; e += WG) {
      let g = e / D4;
      let d = e - g * D4;
      var a = acc4[e] * alpha;
      var l = 0.0;
      for (var jj = g; jj < cnt; jj += parts) {
        let pj = sc[jj];
        a += pj * v4[koff[jj] + d];
        l += pj;
      }
      acc4[e] = a;
      if (d == 0u) { lsum[g] = lsum[g] * alpha + l; }
    }
    workgroupBarrier();
  }

  var L = 0.0;
  for (var g = 0u; g < parts; g++) { L += lsum[g]; }
  let nan = bitcast<f32>(p.nan_bits);
  for (var d = lid; d < D4; d += WG) {
    var a = vec4<f32>(0.0);
    for (var g = 0u; g < parts; g++) { a += acc4[g * D4 + d]; }
    out4[t * C4 + h * D4 + d] = select(vec4<f32>(nan), a / L, valid);
  }
}

// ---- decode_lanes, for CPU adapters (lavapipe): one invocation per (query t, head h), LANES of
// them per workgroup (an override: 2 for decode steps, where 2-lane workgroups measured 1.3-1.8x
// faster than 8-lane ones at every batch and context tried, 8 for prefill_lanes, whose pairs share
// loads across more work; lavapipe runs a workgroup's lanes as one SIMD vector whose lane-varying
// loads it gathers lane by lane), each walking its whole window alone with
// its own online softmax: q, acc (HD4 vec4 each) and (m, l) in registers, per key one dot product,
// a rescale by alpha = exp(m_old - m_new) and p_j v_j added. No workgroup memory and no barriers:
// lavapipe runs a shader with barriers as coroutines, and main_vec4 pays 3 + log2(WG) of them per
// block of 128 keys for a (token, head) whose work is a few hundred loads per key. The head size
// is the override HD4 (= D / 4), so the loops over it unroll and q, acc stay in registers.
// write_kv as in main_vec4: the invocation of (t, h) copies head h's slice of t's key and value to
// t's slot first, and later reads it back itself (program order within one invocation).

override HD4: u32 = 16u;  // decode_lanes: D / 4, 1 ..= MAX_D / 4
override LANES: u32 = 8u;  // decode_lanes / prefill_lanes: invocations per workgroup

@compute @workgroup_size(LANES)
fn decode_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = (wg.y * p.groups_x + wg.x) * LANES + lid;
  if (w >= p.T * p.n_head) { return; }
  let t = w / p.n_head;
  let h = w - t * p.n_head;
  if (p.pairs_skip == 1u && pair_qualifies(t / 2u)) { return; }
  if (p.pairs_skip == 2u && block_extent(t / QB) != 0u) { return; }
  let row = tok_meta[2u * t];
  let pos = tok_meta[2u * t + 1u];
  if (p.write_kv == 1u && row < p.rows) {
    let C4 = p.C / 4u;
    let qb = t * 3u * C4 + h * HD4;  // q; + C4: k, + 2 C4: v
    let dst = (row * p.cap + pos % p.cap) * C4 + h * HD4;
    for (var d = 0u; d < HD4; d++) {
      k4[dst + d] = qkv4[qb + C4 + d];
      v4[dst + d] = qkv4[qb + 2u * C4 + d];
    }
  }
  lane_attend(t, h);
}

// Query t, head h, by one invocation: the online softmax over t's window (see decode_lanes).
fn lane_attend(t: u32, h: u32) {
  let C4 = p.C / 4u;
  let row = tok_meta[2u * t];
  let pos = tok_meta[2u * t + 1u];
  let qb = t * 3u * C4 + h * HD4;
  let ob = t * C4 + h * HD4;
  if (row >= p.rows) {
    for (var d = 0u; d < HD4; d++) { out4[ob + d] = vec4<f32>(bitcast<f32>(p.nan_bits)); }
    return;
  }
  let n = min(pos + 1u, p.cap);
  var slot = (pos + 1u - n) % p.cap;  // the window's first slot; runs on, wrapping once at cap
  let head_base = row * p.cap * C4 + h * HD4;  // + slot * C4 + d4
  var q: array<vec4<f32>, 64>;    // q * scale, [HD4] used
  var acc: array<vec4<f32>, 64>;  // sum of p_j v_j against the running max, [HD4] used
  for (var d = 0u; d < HD4; d++) {
    q[d] = qkv4[qb + d] * p.scale;
    acc[d] = vec4<f32>(0.0);
  }
  var m = LOWEST;
  var l = 0.0;
  for (var j = 0u; j < n; j++) {
    let kb = head_base + slot * C4;
    var dot4 = vec4<f32>(0.0);
    for (var d = 0u; d < HD4; d++) { dot4 += q[d] * k4[kb + d]; }
    let s = dot4.x + dot4.y + dot4.z + dot4.w;
    let m_new = max(m, s);
    let alpha = exp(m - m_new);
    let pj = exp(s - m_new);
    l = l * alpha + pj;
    for (var d = 0u; d < HD4; d++) { acc[d] = acc[d] * alpha + pj * v4[kb + d]; }
    m = m_new;
    slot += 1u;
    if (slot == p.cap) { slot = 0u; }
  }
  for (var d = 0u; d < HD4; d++) { out4[ob + d] = acc[d] / l; }
}

// ---- prefill_lanes, for CPU adapters: one invocation per (token pair t0 = 2i, t1 = 2i + 1, head
// h), LANES per workgroup. On lavapipe every lane-varying storage load is a per-lane scalar loop,
// so the loads of K and V set the cost: when t1 follows t0 in the same row (pos1 = pos0 + 1) and
// the window has not wrapped (pos1 < cap, so key j sits at slot j), the invocation loads each key
// and value word once and applies it to both queries (key pos1 to t1 only): half the loads of
// decode_lanes per query. The tokens of any other pair (different rows, a wrapped ring, a row
// outside the cache) and an odd T's last token are left to a second dispatch, decode_lanes with
// pairs_skip = 1, which skips the rest. (With those tokens done here by inlined calls, this shader
// took ~40 s to compile on lavapipe: llvmpipe's LLVM time grows with every copy of the unrolled
// per-lane loads; alone ~5 s, decode_lanes ~7 s.) Measured on
// lavapipe (12 heads, D 64, one layer): T 128 22 -> 9 ms, T 512 290 -> 125-140 ms against the
// tiled kernel, whose barriers lavapipe runs as coroutines; 3 or 4 tokens per invocation were
// slower than 2 (their q / acc no longer fit the registers). Needs kv_write to have run (no write_kv).

// Pair i = tokens 2i, 2i + 1 qualifies when both exist, share a valid row, the second follows the
// first (pos1 = pos0 + 1) and the ring has not wrapped (pos1 < cap: key j sits at slot j).
fn pair_qualifies(pair: u32) -> bool {
  let t0 = 2u * pair;
  if (t0 + 1u >= p.T) { return false; }
  let row = tok_meta[2u * t0];
  let pos0 = tok_meta[2u * t0 + 1u];
  let pos1 = tok_meta[2u * t0 + 3u];
  return row < p.rows && tok_meta[2u * t0 + 2u] == row && pos1 == pos0 + 1u && pos1 < p.cap;
}

@compute @workgroup_size(LANES)
fn prefill_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = (wg.y * p.groups_x + wg.x) * LANES + lid;
  let pairs = (p.T + 1u) / 2u;
  if (w >= pairs * p.n_head) { return; }
  let pair = w / p.n_head;
  let h = w - pair * p.n_head;
  if (!pair_qualifies(pair)) { return; }  // decode_lanes with pairs_skip does its tokens
  let t0 = 2u * pair;
  let t1 = t0 + 1u;
  let row = tok_meta[2u * t0];
  let pos0 = tok_meta[2u * t0 + 1u];
  let pos1 = pos0 + 1u;
  let C4 = p.C / 4u;
  let head_base = row * p.cap * C4 + h * HD4;  // + j * C4 + d4 (slot j = position j)
  var q0: array<vec4<f32>, 64>;    // q of t0 times the scale, [HD4] used
  var q1: array<vec4<f32>, 64>;    // of t1
  var acc0: array<vec4<f32>, 64>;  // sum of p_j v_j for t0 against its running max, [HD4] used
  var acc1: array<vec4<f32>, 64>;
  for (var d = 0u; d < HD4; d++) {
    q0[d] = qkv4[t0 * 3u * C4 + h * HD4 + d] * p.scale;
    q1[d] = qkv4[t1 * 3u * C4 + h * HD4 + d] * p.scale;
    acc0[d] = vec4<f32>(0.0);
    acc1[d] = vec4<f32>(0.0);
  }
  var m = vec2<f32>(LOWEST);
  var l = vec2<f32>(0.0);
  for (var j = 0u; j <= pos1; j++) {
    let kb = head_base + j * C4;
    // Both scores from one pass over k (each word loaded once) ...
    var dot0 = vec4<f32>(0.0);
    var dot1 = vec4<f32>(0.0);
    for (var d = 0u; d < HD4; d++) {
      let k = k4[kb + d];
      dot0 += q0[d] * k;
      dot1 += q1[d] * k;
    }
    // ... key pos1 lies outside t0's window: its score there is LOWEST, so p = 0 and alpha = 1.
    let s = vec2<f32>(select(dot0.x + dot0.y + dot0.z + dot0.w, LOWEST, j > pos0), dot1.x + dot1.y + dot1.z + dot1.w);
    let m_new = max(m, s);
    let alpha = exp(m - m_new);
    let pj = exp(s - m_new);
    l = l * alpha + pj;
    // ... and both accumulators from one pass over v.
    for (var d = 0u; d < HD4; d++) {
      let v = v4[kb + d];
      acc0[d] = acc0[d] * alpha.x + pj.x * v;
      acc1[d] = acc1[d] * alpha.y + pj.y * v;
    }
    m = m_new;
  }
  for (var d = 0u; d < HD4; d++) {
    out4[t0 * C4 + h * HD4 + d] = acc0[d] / l.x;
    out4[t1 * C4 + h * HD4 + d] = acc1[d] / l.y;
  }
}

// ---- Blocks, for long prompts on CPU adapters: attention as the matrix products it is,
// S = Q K^T / sqrt(D), P = softmax(S) per query, O = P V, a chunk of tc tokens at a time
// through two scratch buffers (their size does not grow with T):
//   qts [n_head, D, tc]: the chunk's queries times 1/sqrt(D), transposed (att_qt);
//   st [n_head, cap, tc]: S, then P, transposed: key j's scores for the chunk's tokens side by side.
// On lavapipe every lane's storage load costs about the same whether or not the address varies
// over the lanes, scalar or vec4, so what counts is loads per multiply-add. Each product is laid
// out as the prompt GEMV gemv_kn_cols: per step of its reduction a lane makes 8 scalar loads and
// 2 vec4 loads and does 16 vec4 multiply-adds.
//   att_qt: one invocation per (token, head) writes its q column (cheap: T x C words).
//   att_scores: a workgroup = (head h, 64 tokens), lane l = one block of QB = 8 tokens (2 vec4 words
//     of a qts row); keys 8 at a time: per dim d, 8 scalar k[j][d] and 2 qts words -> 16 vec4 FMAs,
//     then 16 vec4 stores (st rows are token-contiguous). Every key of the block's extent is scored
//     for every token of the block, also keys past a token's own position (ignored later). A first
//     version with lanes over keys and vec4 q loads (st not transposed) took 2x as long (1024
//     tokens, 12 heads: 117-127 against 57 ms per layer).
//   att_softmax: one invocation per (head, token), the lanes on neighbouring tokens (neighbouring
//     words of each st row): max, exp-sum and normalisation over keys 0..pos.
//   att_pv: a workgroup = (head h, block of QB tokens); lane l owns 2 vec4 words of the head's
//     output dims (l * 2, l * 2 + 1, then + 2 BL while D / 4 > 2 BL). Per key: 2 v words, 8 p
//     values (0 past a token's position), 16 vec4 FMAs.
// A block qualifies when its tokens share one valid row and every position is < cap (slot =
// position, keys 0..max pos); other tokens (rows mixed in a block, a wrapped ring, a row outside
// the cache) are left to decode_lanes with pairs_skip = 2, which skips the rest. No workgroup
// memory, no barriers. Loop bounds are runtime values (p.D), not the HD4 override, so LLVM does
// not unroll the head loops (llvmpipe's compile time grows with every unrolled copy: these four
// compile in ~1.4 s with the Mesa shader cache off, prefill_lanes + decode_lanes in ~13-18 s).
// Needs kv_write to have run.

@group(0) @binding(6) var<storage, read_write> st: array<f32>;     // [n_head, cap, tc]: S, then P
@group(0) @binding(6) var<storage, read_write> st4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> qts: array<f32>;     // [n_head, D, tc]: q / sqrt(D)
@group(0) @binding(7) var<storage, read_write> qts4: array<vec4<f32>>;

const QB: u32 = 8u;  // tokens per block
const BL: u32 = 8u;  // lanes per workgroup of att_scores / att_pv (one 256-bit row of f32 on lavapipe)

// Largest position + 1 over block b's tokens when the block qualifies (they share a valid row,
// every position < cap), else 0.
fn block_extent(b: u32) -> u32 {
  let t0 = b * QB;
  if (t0 >= p.T) { return 0u; }
  let nt = min(QB, p.T - t0);
  let row = tok_meta[2u * t0];
  var ok = row < p.rows;
  var n = 0u;
  for (var i = 0u; i < nt; i++) {
    let pos = tok_meta[2u * (t0 + i) + 1u];
    ok = ok && tok_meta[2u * (t0 + i)] == row && pos < p.cap;
    n = max(n, pos + 1u);
  }
  return select(0u, n, ok);
}

// att_qt / att_softmax: invocation index = h * tc + (token in chunk), LANES per workgroup. Returns
// (h, token in chunk, token), the token T when the invocation is past the chunk's tokens or heads.
fn chunk_token(wg: vec3<u32>, lid: u32) -> vec3<u32> {
  let w = (wg.y * p.groups_x + wg.x) * LANES + lid;
  let h = w / p.tc;
  let tl = w - h * p.tc;
  let t = p.t_base + tl;
  return vec3<u32>(h, tl, select(t, p.T, h >= p.n_head || t >= p.T));
}

@compute @workgroup_size(LANES)
fn att_qt(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let ht = chunk_token(wg, lid);
  let h = ht.x;
  let tl = ht.y;
  let t = ht.z;
  if (t >= p.T) { return; }
  let C4 = p.C / 4u;
  let D4 = p.D / 4u;
  for (var d4 = 0u; d4 < D4; d4++) {
    let q = qkv4[t * 3u * C4 + h * D4 + d4] * p.scale;
    for (var c = 0u; c < 4u; c++) { qts[(h * p.D + 4u * d4 + c) * p.tc + tl] = q[c]; }
  }
}

// Workgroup index = (group of BL blocks in the chunk) * n_head + h.
@compute @workgroup_size(BL)
fn att_scores(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = wg.y * p.groups_x + wg.x;
  let h = w % p.n_head;
  let bc = (w / p.n_head) * BL + lid;  // this lane's block in the chunk
  if (bc * QB >= p.tc) { return; }
  let b = p.t_base / QB + bc;
  let n = block_extent(b);  // 0 when b is past T or does not qualify
  if (n == 0u) { return; }
  let row = tok_meta[2u * b * QB];
  let tc4 = p.tc / 4u;
  let q0 = h * p.D * tc4 + bc * 2u;  // + d * tc4: the block's 2 words of qts row (h, d)
  for (var j0 = 0u; j0 < n; j0 += 8u) {
    var kb: array<u32, 8>;  // [e] k[row, j0 + e] head h's first element (clamped into the extent)
    for (var e = 0u; e < 8u; e++) { kb[e] = (row * p.cap + min(j0 + e, n - 1u)) * p.C + h * p.D; }
    // [2e + word] S for key j0 + e and the block's tokens; zeroed by hand each round (see att_pv)
    var acc: array<vec4<f32>, 16>;
    for (var a = 0u; a < 16u; a++) { acc[a] = vec4<f32>(0.0); }
    for (var d = 0u; d < p.D; d++) {
      let qa = qts4[q0 + d * tc4];
      let qb = qts4[q0 + d * tc4 + 1u];
      for (var e = 0u; e < 8u; e++) {
        let kv = k_cache[kb[e] + d];
        acc[2u * e] += kv * qa;
        acc[2u * e + 1u] += kv * qb;
      }
    }
    for (var e = 0u; e < 8u; e++) {
      if (j0 + e < n) {
        let o = (h * p.cap + j0 + e) * tc4 + bc * 2u;
        st4[o] = acc[2u * e];
        st4[o + 1u] = acc[2u * e + 1u];
      }
    }
  }
}

@compute @workgroup_size(LANES)
fn att_softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let ht = chunk_token(wg, lid);
  let h = ht.x;
  let tl = ht.y;
  let t = ht.z;
  if (t >= p.T) { return; }
  if (block_extent(t / QB) == 0u) { return; }
  let n = tok_meta[2u * t + 1u] + 1u;  // keys 0..pos
  let col = h * p.cap * p.tc + tl;  // + j * tc
  var m = LOWEST;
  for (var j = 0u; j < n; j++) { m = max(m, st[col + j * p.tc]); }
  var l = 0.0;
  for (var j = 0u; j < n; j++) {
    let e = exp(st[col + j * p.tc] - m);
    st[col + j * p.tc] = e;
    l += e;
  }
  let inv = 1.0 / l;
  for (var j = 0u; j < n; j++) { st[col + j * p.tc] *= inv; }
}

// Workgroup index = (block in chunk) * n_head + h.
@compute @workgroup_size(BL)
fn att_pv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = wg.y * p.groups_x + wg.x;
  let h = w % p.n_head;
  let bc = w / p.n_head;
  if (bc * QB >= p.tc) { return; }
  let b = p.t_base / QB + bc;
  let n = block_extent(b);
  if (n == 0u) { return; }
  let C4 = p.C / 4u;
  let D4 = p.D / 4u;
  let row = tok_meta[2u * b * QB];
  let pcol = h * p.cap * p.tc + bc * QB;  // + j * tc + i: P of key j for the block's token i
  var lim: array<u32, QB>;  // [i] the block's token i's keys: position + 1 (token clamped to T - 1)
  for (var i = 0u; i < QB; i++) { lim[i] = tok_meta[2u * min(b * QB + i, p.T - 1u) + 1u] + 1u; }
  let vbase = row * p.cap * C4 + h * D4;  // + j * C4 + word
  for (var w0 = lid * 2u; w0 < D4; w0 += 2u * BL) {
    let w1 = min(w0 + 1u, D4 - 1u);  // an odd D / 4's last lane reloads w0, not stored
    // [i * 2 + word], QB * 2; zeroed by hand each round: declared in the loop body it kept the
    // previous round's sums on Dawn 0.6.2 / lavapipe (D 128 and 256 went wrong from the 2nd round)
    var acc: array<vec4<f32>, 16>;
    for (var a = 0u; a < 2u * QB; a++) { acc[a] = vec4<f32>(0.0); }
    for (var j = 0u; j < n; j++) {
      let va = v4[vbase + j * C4 + w0];
      let vb = v4[vbase + j * C4 + w1];
      for (var i = 0u; i < QB; i++) {
        let pij = select(0.0, st[pcol + j * p.tc + i], j < lim[i]);
        acc[2u * i] += pij * va;
        acc[2u * i + 1u] += pij * vb;
      }
    }
    for (var i = 0u; i < QB; i++) {
      let t = b * QB + i;
      if (t < p.T) {
        out4[t * C4 + h * D4 + w0] = acc[2u * i];
        if (w0 + 1u < D4) { out4[t * C4 + h * D4 + w0 + 1u] = acc[2u * i + 1u]; }
      }
    }
  }
}

// ---- Tiled variant for prefill: QT = WG / 4 consecutive tokens x one head per workgroup, so each
// K/V row loaded serves QT queries. Used when the step holds runs of tokens of one row (prompts).
//   A tile qualifies when all its tokens have the same valid row and positions < cap (so every
//   window is positions 0..p and slot = position); otherwise this kernel leaves it and a second
//   dispatch of main_vec4 with tiled_skip = 1 does its tokens one by one (that dispatch skips the
//   tokens of qualifying tiles), so any mix of rows is correct, just without the sharing. (The
//   fallback is a separate dispatch because inlining attend_vec4 here made lavapipe's LLVM
//   compile of this pipeline take ~30 s.)
//   Lanes: 4 per query (q = lid / 4, r = lid % 4); lane r owns output dims (as vec4 indices)
//   r, r + 4, r + 8, r + 12 (D <= 64) and keeps its own copy of the query's online-softmax state
//   (m, l), so no reduction over lanes is needed. Per block of TKB keys (3 barriers):
//   1. the workgroup copies K and V rows of keys b .. b + TKB - 1 into ks, vs (workgroup memory);
//   2. lane r scores keys r, r + 4, ... of the block for its query into ssc (keys after the
//      query's position are masked with LOWEST);
//   3. each lane reads its query's TKB scores, takes their max itself, rescales (m, l, acc) and
//      adds p_j * v_j for its dims.
//   Workgroup storage: ks + vs 8 KiB, qt 2 KiB, ssc 0.5 KiB at WG = 32.

// A tile qualifies when its tokens share one valid row and every position is < cap.
fn tile_qualifies(tile: u32) -> bool {
  let t0 = tile * QT;
  let nt = min(QT, p.T - t0);
  let row = tok_meta[2u * t0];
  var ok = row < p.rows;
  for (var i = 0u; i < nt; i++) {
    ok = ok && tok_meta[2u * (t0 + i)] == row && tok_meta[2u * (t0 + i) + 1u] < p.cap;
  }
  return ok;
}

const LPQ: u32 = 4u;            // lanes per query
override QT: u32 = WG / LPQ;    // queries per tile
const TKB: u32 = 16u;           // keys per block
const TD4: u32 = 16u;           // most vec4s per head (D <= 64)

var<workgroup> ks: array<vec4<f32>, 256>;  // [TKB, D / 4]
var<workgroup> vs: array<vec4<f32>, 256>;  // [TKB, D / 4]
var<workgroup> ssc: array<f32, QT * TKB>;  // [QT, TKB] scores
var<workgroup> qt: array<vec4<f32>, QT * TD4>;  // [QT, D / 4] the tile's queries
var<workgroup> tile_ok: u32;               // 1 when the tile qualifies
var<workgroup> tile_maxp: u32;             // largest position in the tile

@compute @workgroup_size(WG)
fn tiled_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = wg.y * p.groups_x + wg.x;
  let tiles = (p.T + QT - 1u) / QT;
  if (w >= tiles * p.n_head) { return; }  // uniform
  let tile = w / p.n_head;
  let h = w - tile * p.n_head;
  let t0 = tile * QT;
  let nt = min(QT, p.T - t0);  // tokens in this tile (uniform)
  let row = tok_meta[2u * t0];
  if (lid == 0u) {
    var maxp = 0u;
    for (var i = 0u; i < nt; i++) { maxp = max(maxp, tok_meta[2u * (t0 + i) + 1u]); }
    tile_ok = select(0u, 1u, tile_qualifies(tile));
    tile_maxp = maxp;
  }
  if (workgroupUniformLoad(&tile_ok) == 0u) { return; }  // main_vec4 does this tile's tokens
  let nkeys = workgroupUniformLoad(&tile_maxp) + 1u;  // keys 0 .. maxp serve every query

  let D4 = p.D / 4u;
  let C4 = p.C / 4u;
  let q = lid / LPQ;
  let r = lid - q * LPQ;
  let live = q < nt;
  let tq = t0 + min(q, nt - 1u);  // inactive lanes shadow the last token, write nothing
  let pq = tok_meta[2u * tq + 1u];
  let head_base = row * p.cap * C4 + h * D4;  // + position * C4 + d4

  // The tile's queries (pre-scaled), [QT, D / 4]
  for (var e = lid; e < QT * D4; e += WG) {
    let qi = e / D4;
    qt[e] = qkv4[(t0 + min(qi, nt - 1u)) * 3u * C4 + h * D4 + (e - qi * D4)] * p.scale;
  }
  var acc: array<vec4<f32>, 4>;  // dims r + 4 i
  for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(0.0); }
  var m = LOWEST;
  var l = 0.0;

  for (var b = 0u; b < nkeys; b += TKB) {
    let cnt = min(TKB, nkeys - b);
    // 1. K and V rows of this block's keys
    for (var e = lid; e < cnt * D4; e += WG) {
      let j = e / D4;
      let off = head_base + (b + j) * C4 + (e - j * D4);
      ks[e] = k4[off];
      vs[e] = v4[off];
    }
    workgroupBarrier();
    // 2. scores of keys r, r + 4, r + 8, r + 12 for query q; masked past the query's position
    for (var jj = 0u; jj < TKB / LPQ; jj++) {
      let j = r + jj * LPQ;
      var s = LOWEST;
      if (j < cnt && b + j <= pq) {
        var dot4 = vec4<f32>(0.0);
        for (var d = 0u; d < D4; d++) { dot4 += qt[q * D4 + d] * ks[j * D4 + d]; }
        s = dot4.x + dot4.y + dot4.z + dot4.w;
      }
      ssc[q * TKB + j] = s;
    }
    workgroupBarrier();
    // 3. online softmax update of this lane's copy of (m, l) and its dims of acc
    var bm = LOWEST;
    for (var j = 0u; j < TKB; j++) { bm = max(bm, ssc[q * TKB + j]); }
    let m_new = max(m, bm);
    let alpha = exp(m - m_new);
    l = l * alpha;
    for (var i = 0u; i < 4u; i++) { acc[i] = acc[i] * alpha; }
    for (var j = 0u; j < cnt; j++) {
      let s = ssc[q * TKB + j];
      let pj = select(0.0, exp(s - m_new), s > LOWEST);  // masked keys add nothing
      l += pj;
      for (var i = 0u; i < 4u; i++) {
        let d = r + i * LPQ;
        if (d < D4) { acc[i] += pj * vs[j * D4 + d]; }
      }
    }
    m = m_new;
    workgroupBarrier();  // ks, vs and ssc are rewritten by the next block
  }

  if (live) {
    for (var i = 0u; i < 4u; i++) {
      let d = r + i * LPQ;
      if (d < D4) { out4[tq * C4 + h * D4 + d] = acc[i] / l; }
    }
  }
}
