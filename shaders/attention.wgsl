// Causal multi-head attention over the KV cache, for prefill and decode alike.
//   qkv [T, 3C] f32: q = cols [0, C), head h uses cols [h*D, (h+1)*D), D = C / n_head. The keys
//     and values of this step, cols [C, 2C) and [2C, 3C), are in the cache already (kv_write ran
//     first), or, with write_kv = 1 (decode: every token of the step in a row of its own), the
//     one-query kernels (main, main_vec4, decode_lanes) copy them there themselves:
//     the workgroup of (token t, head h) writes head h's slice of t's key and value to t's slot,
//     then a storageBarrier, then attends. No other workgroup reads that slice of that row (each
//     reads its own token's row and head), so no cross-workgroup ordering is needed, and the
//     step saves its kv_write dispatch.
//   k_cache, v_cache [rows, cap, C] f32 or f16 (KV_F16, see kc below): position p of row r lives
//     at slot p % cap. main reads the f32 cache only (the engine refuses f16 unless D % 8 == 0,
//     where the vec4 kernels run).
//   meta [T, 2] u32: query t belongs to row r_t at absolute position p_t.
//   out [T, C] f32: out[t, h*D + d] = sum_j softmax_j(q.k_j / sqrt(D)) v_j[d] over the n = min(p_t + 1,
//     cap) positions p_t - n + 1 .. p_t of row r_t (the ring's window; the engine keeps p_t < cap, so
//     in practice positions 0..p_t). A query whose row is >= rows gets a NaN output (defence in depth).
//
// This file holds the bindings, the parameters and the one-query kernels, which serve decode steps
// and any step token by token: main (scalar loads, any D), main_vec4 (the same with vec4 loads,
// D % 4 == 0; built at WG = 32 and, for decode steps on GPUs, at a wider WG) and decode_lanes (CPU
// adapters: one invocation per token and head, no barriers). The prompt kernels, which share K/V
// loads between the tokens of a row, are in attention_prompt.wgsl (prefill_lanes, the 'blocks'
// passes, tiled_vec4) and attention_subgroups.wgsl (prefill_sg); each is appended to this
// file (modules 'attention+attention_prompt', 'attention+attention_subgroups'). The one-query
// kernels also do the tokens a prompt kernel leaves (tiles, pairs or blocks that do not qualify:
// tiled_skip, pairs_skip), so the qualification tests are here too.
//
// main_vec4 at a wide WG: a decode step has only rows x n_head (token, head) pairs, 12 workgroups
// for gpt2 at batch 1, each walking its window in blocks of KB = 4 WG keys; at WG 32 a 1024-key
// window is 8 dependent blocks on one warp, at WG 256 one block with 8 warps to hide the loads'
// latency.
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
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;  // [rows, cap, C] f32 (written only with write_kv)
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
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;  // [T, C / 4]

// ---- The cache as the vec4 kernels (every kernel but main) see it, f32 or f16 by KV_F16, an
// override fixed when the pipeline is built (one pipeline per cache dtype; the untaken branch of
// each `if (KV_F16)` folds away). Both are one array of 16-byte words:
//   f32: [rows, cap, C / 4] words, word i = elements 4i .. 4i + 3 (a vec4<f32>'s bits);
//   f16: [rows, cap, C / 8] words, IEEE halves two per u32 (element 2i low, 2i + 1 high, as
//        unpack2x16float reads them), word i = elements 8i .. 8i + 7.
// Kernels address the cache in groups of 4 elements (`base` below: a group index) whatever the
// dtype. With f16 the engine requires D % 8 == 0, so a head's slice of a slot starts at an even
// group, a whole word, and no two heads (workgroups) ever write the same word: kv_put writes
// whole words. A K/V value outside f16's finite range (|x| > 65504) is not representable: what
// pack2x16float stores then is indeterminate.
override KV_F16: bool = false;
@group(0) @binding(3) var<storage, read_write> kc: array<vec4<u32>>;  // [rows, cap, C / 4 or C / 8] words
@group(0) @binding(4) var<storage, read_write> vc: array<vec4<u32>>;

fn unpack4(w: vec2<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn pack8(a: vec4<f32>, b: vec4<f32>) -> vec4<u32> {
  return vec4<u32>(pack2x16float(a.xy), pack2x16float(a.zw), pack2x16float(b.xy), pack2x16float(b.zw));
}

// Group d of the head slice starting at group `base` (even with f16): elements 4 (base + d) ..
// + 3 of the K or V cache. With a constant d (an unrolled loop) the f16 path loads each word once
// for groups 2m and 2m + 1 (the same address) and the select folds.
fn k4_at(base: u32, d: u32) -> vec4<f32> {
  if (KV_F16) {
    let w = kc[(base >> 1u) + (d >> 1u)];
    return unpack4(select(w.xy, w.zw, (d & 1u) == 1u));
  }
  return bitcast<vec4<f32>>(kc[base + d]);
}

fn v4_at(base: u32, d: u32) -> vec4<f32> {
  if (KV_F16) {
    let w = vc[(base >> 1u) + (d >> 1u)];
    return unpack4(select(w.xy, w.zw, (d & 1u) == 1u));
  }
  return bitcast<vec4<f32>>(vc[base + d]);
}

// Element e of the K cache (the 'blocks' scores, which read scalars).
fn k_at(e: u32) -> f32 {
  if (KV_F16) { return unpack2x16float(kc[e >> 3u][(e >> 1u) & 3u])[e & 1u]; }
  return bitcast<f32>(kc[e >> 2u][e & 3u]);
}

// write_kv: groups 0 .. n4 - 1 of a head's key (qkv4 groups from `src`) and value (from src + C4)
// to the cache slice at group `dst`, by the invocations first, first + stride, ... (f32: a group
// each, f16: a word of two groups each; n4 and dst are even then).
fn kv_put(dst: u32, src: u32, n4: u32, first: u32, stride: u32) {
  let C4 = p.C / 4u;
  if (KV_F16) {
    for (var w = first; w < n4 / 2u; w += stride) {
      let s = src + 2u * w;
      kc[(dst >> 1u) + w] = pack8(qkv4[s], qkv4[s + 1u]);
      vc[(dst >> 1u) + w] = pack8(qkv4[s + C4], qkv4[s + C4 + 1u]);
    }
  } else {
    for (var d = first; d < n4; d += stride) {
      kc[dst + d] = bitcast<vec4<u32>>(qkv4[src + d]);
      vc[dst + d] = bitcast<vec4<u32>>(qkv4[src + C4 + d]);
    }
  }
}

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
    kv_put(head_base + (pos % p.cap) * C4, t * 3u * C4 + C4 + h * D4, D4, lid, WG);
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
        for (var d = 0u; d < D4; d++) { dot4 += qs4[d] * k4_at(kb, d); }
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
        a += pj * v4_at(koff[jj], d);
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
// them per workgroup (lavapipe runs a workgroup's lanes as one SIMD vector whose lane-varying
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
    // q at t * 3 C4 + h HD4; k at + C4, v at + 2 C4
    kv_put((row * p.cap + pos % p.cap) * C4 + h * HD4, t * 3u * C4 + C4 + h * HD4, HD4, 0u, 1u);
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
    for (var d = 0u; d < HD4; d++) { dot4 += q[d] * k4_at(kb, d); }
    let s = dot4.x + dot4.y + dot4.z + dot4.w;
    let m_new = max(m, s);
    let alpha = exp(m - m_new);
    let pj = exp(s - m_new);
    l = l * alpha + pj;
    for (var d = 0u; d < HD4; d++) { acc[d] = acc[d] * alpha + pj * v4_at(kb, d); }
    m = m_new;
    slot += 1u;
    if (slot == p.cap) { slot = 0u; }
  }
  for (var d = 0u; d < HD4; d++) { out4[ob + d] = acc[d] / l; }
}

// ---- Qualification of the prompt kernels' blocks (attention_prompt.wgsl): the one-query kernels
// skip the tokens these say a prompt kernel did (tiled_skip, pairs_skip).

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

const QB: u32 = 8u;  // tokens per block of the 'blocks' passes

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

const LPQ: u32 = 4u;            // lanes per query
override QT: u32 = WG / LPQ;    // queries per tile

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
