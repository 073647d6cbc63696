// GPU sampler: logit processors, top-k / top-p / min-p selection and a Gumbel-max draw, one
// workgroup (256 threads) per sequence row over the vocabulary V.
//
// Per decode step the sampler runs two dispatches over logits [rows, V] f32:
//   select_row: z = processed logits (1 logit_bias, 2 repetition penalty, 2b hard bans: -inf for
//               the ids of the row's ban masks (n-grams, bad words, suppressed tokens; its end
//               ids while it has drawn fewer than min_new tokens), 3 / temperature (the row's max
//               subtracted first where the quotient would overflow f32), 4 frequency
//               and presence penalties from counts [rows, V] u32) -> work [rows, V]; greedy
//               argmax; the kept set of top-k, top-p and min-p -> cuts[row]. A banned id stays
//               -inf through 3-4 and is never kept, so where the bans sit among 1-4 changes nothing.
//   draw_row:   Gumbel-max draw over the kept tokens, optional probs [rows, V] (softmax over the
//               kept tokens, 0 elsewhere), out_ids[row]; counts, step and the EOS latch updated;
//               optionally lp_out[row], the chosen token's log-probability under the distribution
//               it was drawn from (log-softmax of z over the kept tokens; greedy rows: over every
//               token, z not divided).
// sample() uses select_row + draw_row on one row, then compact_row (kept ids, ascending) and
// draw_many (one invocation per draw, histogram of chosen ids).
//
// The kept set is always a prefix of the vocabulary in the order (z descending, id ascending),
// so it is stored as a cut: token v is kept iff (okey(z_v), -v) >= (cut.key, -cut.id_lim)
// lexicographically, and exp(z_v - m) >= cut.min_p. okey() maps f32 to u32 preserving order.
// Cuts are found with a radix select: 4 passes of 8 bits over okey(z), histograms of counts (and,
// for top-p, of probability mass) in workgroup memory, then a scan over the 256 buckets finds
// the bucket holding the k-th element (or the element where the cumulative mass reaches p).
//
// Mass is summed in 64-bit fixed point (2^-40 units of exp(z - m), a (hi, lo) u32 pair with an
// explicit carry), so the sums are exact and independent of the order the atomics land in:
// every f32 exp(z - m) >= 2^-17 converts without rounding. Top-p keeps the smallest prefix whose
// cumulative probability reaches p - 2^-22 (the tolerance absorbs f32 rounding of probabilities
// that sum to p exactly, e.g. 0.2 + 0.3 = 0.5; it is not 1e-6 because HF's fixture has a boundary
// token whose preceding cumulative is 6.9e-7 below p and HF keeps it), ties going to smaller ids.
//
// Random numbers: Philox4x32-10 keyed by the row's 64-bit seed, counter (token id, step, 0, 0),
// so every (row, step, token) has its own independent noise and a row's draws do not depend on
// the other rows of the batch. Gumbel noise g = -log(-log(u)), u = (x >> 8 + 0.5) * 2^-24.
//
// Limits: 256 invocations, 9 KiB of workgroup memory, at most 8 storage buffers per entry point
// (select_row and draw_row use 8: WebGPU's default maxStorageBuffersPerShaderStage).

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
const TOP_P_FUZZ: f32 = 2.384185791015625e-7;  // 2^-22
const TWO32: f32 = 4294967296.0;

struct Globals {
  rows: u32,
  V: u32,
  logits_off: u32,   // element offset of row 0 inside the `logits` binding (alignment slack)
  out_off: u32,      // element offset of row 0 inside the `out_ids` binding
  flags: u32,        // bit 0: write probs; bit 1: update counts, step and finished flags; bit 2: write lp_out
  ndraws: u32,       // draw_many: number of draws; philox_kat: number of cases
  rows_per_y: u32,   // workgroups per dispatch row (index = y * rows_per_y + x)
  _pad: u32,
}

// Per-row options, normalised on the host.
struct RowParams {
  temperature: f32,  // 0 = greedy (z is then not divided)
  top_k: u32,        // max(topK, min_keep) when that is < V, else 0 (off)
  top_p: f32,        // in (0, 1) when on, 1 when off
  min_p: f32,        // 0 = off
  min_keep: u32,     // min_tokens_to_keep, clamped to [1, V]
  freq: f32,
  pres: f32,
  rep: f32,          // repetition penalty, 1 = off
  seed_lo: u32,      // Philox key
  seed_hi: u32,
  eos: u32,          // NONE when there is no EOS
  stop_at_eos: u32,
  bias_row: u32,     // row of `bias` [*, V] holding this row's logit_bias, NONE = no bias
  ban_flags: u32,    // bit 0: read the row's always-mask; bit 1: its until-min mask
  min_new: u32,      // the until-min mask applies while state.step < min_new
  _p2: u32,
}

struct RowState {
  step: u32,         // draws made so far (Philox counter word 1)
  finished: u32,     // EOS latch
  _p0: u32,
  _p1: u32,
}

// The kept set of a row (see the header) and the greedy choice.
struct Cut {
  m: f32,            // max of z
  key: u32,
  id_lim: u32,
  min_p: f32,        // 0 = no min-p condition
  greedy: u32,       // 1: the row takes `amax` (temperature 0)
  amax: u32,         // argmax of z, ties to the smaller id
  n_kept: u32,       // compact_row: number of kept tokens
  _p0: u32,
}

@group(0) @binding(0) var<uniform> g: Globals;
@group(0) @binding(1) var<storage, read> logits: array<f32>;          // [rows, V]
@group(0) @binding(2) var<storage, read> params: array<RowParams>;    // [rows]
@group(0) @binding(3) var<storage, read> bias: array<f32>;            // [bias rows, V]
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;    // [rows, V]
@group(0) @binding(5) var<storage, read_write> work: array<f32>;      // [rows, V] processed z
@group(0) @binding(6) var<storage, read_write> state: array<RowState>; // [rows]
@group(0) @binding(7) var<storage, read_write> cuts: array<Cut>;      // [rows]
@group(0) @binding(8) var<storage, read_write> out_ids: array<u32>;   // [rows] (+ out_off)
@group(0) @binding(9) var<storage, read_write> probs: array<f32>;     // [rows, V]
@group(0) @binding(10) var<storage, read_write> aux: array<u32>;      // kept ids / prompt ids / KAT cases
@group(0) @binding(11) var<storage, read_write> hist: array<atomic<u32>>; // [V] draw_many counts
@group(0) @binding(12) var<storage, read> bans: array<u32>;           // [rows, 2, ceil(V / 32)] bit masks
@group(0) @binding(13) var<storage, read_write> lp_out: array<f32>;   // [rows] the chosen token's processed log-prob

// Radix histograms (bucket = one 8-bit digit of okey) and their descending scans.
var<workgroup> h_cnt: array<atomic<u32>, 256>;
var<workgroup> h_hi: array<atomic<u32>, 256>;
var<workgroup> h_lo: array<atomic<u32>, 256>;
var<workgroup> s_cnt: array<u32, 256>;
var<workgroup> s_hi: array<u32, 256>;
var<workgroup> s_lo: array<u32, 256>;
// Argmax / sum reductions.
var<workgroup> r_val: array<f32, 256>;
var<workgroup> r_id: array<u32, 256>;
var<workgroup> r_sum: array<f32, 256>;
// Results of a radix select: the key found, how many elements (and how much mass) lie strictly
// above it, how many are equal to it; the mass target of top-p.
var<workgroup> w_key: u32;
var<workgroup> w_above: u32;
var<workgroup> w_mabove: vec2<u32>;
var<workgroup> w_eq: u32;
var<workgroup> w_target: vec2<u32>;
var<workgroup> w_tie: u32;
var<workgroup> w_j: u32;
var<workgroup> w_count: atomic<u32>;
var<workgroup> w_u: u32;

// Not a const: a const-expression may not evaluate to infinity.
var<private> NEG_INF_BITS: u32 = 0xff800000u;
fn neg_inf() -> f32 { return bitcast<f32>(NEG_INF_BITS); }

// ---- Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) ----

// High 32 bits of the 64-bit product a * b (WGSL has no u64): four 16x16 partial products.
fn mulhi32(a: u32, b: u32) -> u32 {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let mid = ((a0 * b0) >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}

fn philox(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
  var c = ctr;
  var k = key;
  for (var i = 0u; i < 10u; i++) {
    let hi0 = mulhi32(0xD2511F53u, c.x);
    let lo0 = 0xD2511F53u * c.x;
    let hi1 = mulhi32(0xCD9E8D57u, c.z);
    let lo1 = 0xCD9E8D57u * c.z;
    c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
  }
  return c;
}

// Gumbel(0, 1) noise of token v at a row's step. u in [2^-25, 1 - 2^-25]: never 0 or 1.
fn gumbel(seed_lo: u32, seed_hi: u32, step: u32, v: u32) -> f32 {
  let x = philox(vec4<u32>(v, step, 0u, 0u), vec2<u32>(seed_lo, seed_hi)).x;
  let u = (f32(x >> 8u) + 0.5) * 5.9604644775390625e-8;
  return -log(-log(u));
}

// ---- order keys, 64-bit fixed point ----

// f32 -> u32 with the same order (larger z, larger key); -0 is mapped to +0.
fn okey(z: f32) -> u32 {
  var b = bitcast<u32>(z);
  if (b == 0x80000000u) { b = 0u; }
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn okey_inv(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// (hi, lo) of floor(e * 2^40) for e in [0, 1]: exact for e >= 2^-17.
fn fixed40(e: f32) -> vec2<u32> {
  let s = e * 256.0;              // e * 2^40 / 2^32
  let hi = u32(s);
  return vec2<u32>(hi, u32((s - f32(hi)) * TWO32));  // the fraction has <= 24 bits: exact
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let lo = a.y + b.y;
  return vec2<u32>(a.x + b.x + select(0u, 1u, lo < a.y), lo);
}

fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  return vec2<u32>(a.x - b.x - select(0u, 1u, a.y < b.y), a.y - b.y);
}

fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
  return a.x > b.x || (a.x == b.x && a.y >= b.y);
}

fn mul64_32(a: vec2<u32>, j: u32) -> vec2<u32> {
  return vec2<u32>(a.x * j + mulhi32(a.y, j), a.y * j);
}

fn f32_of64(a: vec2<u32>) -> f32 {
  return f32(a.x) * TWO32 + f32(a.y);
}

// floor(total * (p - TOP_P_FUZZ)) as (hi, lo), at least 1 (relative error ~1e-7 of total, from f32).
fn mass_target(total: vec2<u32>, p: f32) -> vec2<u32> {
  let tf = max(f32_of64(total) * (p - TOP_P_FUZZ), 0.0);
  let hi = u32(floor(tf / TWO32));
  let rem = clamp(tf - f32(hi) * TWO32, 0.0, 4294967040.0);
  var t = vec2<u32>(hi, u32(rem));
  if (t.x == 0u && t.y == 0u) { t.y = 1u; }
  return t;
}

// Whether (okey(z), -v) is inside a cut (key, id_lim), min-p aside.
fn in_cut(z: f32, v: u32, key: u32, id_lim: u32) -> bool {
  let k = okey(z);
  return k > key || (k == key && v <= id_lim);
}

fn is_kept(z: f32, v: u32, c: Cut) -> bool {
  return in_cut(z, v, c.key, c.id_lim) && (c.min_p == 0.0 || exp(z - c.m) >= c.min_p);
}

// (a, ia) beats (b, ib): larger value, ties to the smaller id (NONE loses every tie).
fn beats(a: f32, ia: u32, b: f32, ib: u32) -> bool {
  return ib == NONE || (ia != NONE && (a > b || (a == b && ia < ib)));
}

// ---- workgroup collectives (call from uniform control flow) ----

// Argmax of (val, id) and sum of `s` over the workgroup, results in r_val[0], r_id[0], r_sum[0].
fn reduce_argmax_sum(val: f32, id: u32, s: f32, lid: u32) {
  r_val[lid] = val;
  r_id[lid] = id;
  r_sum[lid] = s;
  workgroupBarrier();
  for (var off = WG / 2u; off > 0u; off = off >> 1u) {
    if (lid < off) {
      if (beats(r_val[lid + off], r_id[lid + off], r_val[lid], r_id[lid])) {
        r_val[lid] = r_val[lid + off];
        r_id[lid] = r_id[lid + off];
      }
      r_sum[lid] = r_sum[lid] + r_sum[lid + off];
    }
    workgroupBarrier();
  }
}

// Inclusive scan of s_cnt (and of the 64-bit s_hi:s_lo when `mass`) over the 256 threads.
fn scan256(lid: u32, mass: bool) {
  workgroupBarrier();
  for (var off = 1u; off < WG; off = off << 1u) {
    var c = 0u;
    var mm = vec2<u32>(0u, 0u);
    if (lid >= off) {
      c = s_cnt[lid - off];
      if (mass) { mm = vec2<u32>(s_hi[lid - off], s_lo[lid - off]); }
    }
    workgroupBarrier();
    s_cnt[lid] = s_cnt[lid] + c;
    if (mass) {
      let t = add64(vec2<u32>(s_hi[lid], s_lo[lid]), mm);
      s_hi[lid] = t.x;
      s_lo[lid] = t.y;
    }
    workgroupBarrier();
  }
}

// Radix select over the elements of work[base .. base + V) whose key is >= kcut, walking keys
// from the largest down. Count mode: finds the key of the n-th element. Mass mode: the key of the
// element where the cumulative mass exp(z - m) reaches (p - TOP_P_FUZZ) of the total (kept in w_target).
// Leaves w_key, w_above (elements with a larger key), w_mabove (their mass), w_eq (elements equal).
fn radix_select(base: u32, V: u32, lid: u32, mass: bool, kcut: u32, n: u32, m: f32, p: f32) {
  workgroupBarrier();  // every thread has read the previous results
  if (lid == 0u) {
    w_key = 0u;
    w_above = 0u;
    w_mabove = vec2<u32>(0u, 0u);
    w_eq = 0u;
  }
  for (var ps = 0u; ps < 4u; ps++) {
    let shift = 24u - 8u * ps;
    // Bits above this digit (none in the first pass; a shift by 32 would wrap to 0).
    let hmask = select(0xffffffffu << (shift + 8u), 0u, ps == 0u);
    atomicStore(&h_cnt[lid], 0u);
    atomicStore(&h_hi[lid], 0u);
    atomicStore(&h_lo[lid], 0u);
    workgroupBarrier();
    let prefix = w_key;
    let above = w_above;
    let mabove = w_mabove;
    for (var v = lid; v < V; v += WG) {
      let z = work[base + v];
      let k = okey(z);
      if (k >= kcut && (k & hmask) == prefix) {
        let d = (k >> shift) & 0xffu;
        atomicAdd(&h_cnt[d], 1u);
        if (mass) {
          // 64-bit atomic add as two 32-bit ones: the carry of the low word goes to the high word.
          let f = fixed40(exp(z - m));
          let old = atomicAdd(&h_lo[d], f.y);
          let hi = f.x + select(0u, 1u, old + f.y < old);
          if (hi != 0u) { atomicAdd(&h_hi[d], hi); }
        }
      }
    }
    workgroupBarrier();
    // Thread lid holds bucket 255 - lid, so the inclusive scan runs from the largest keys down.
    let b = 255u - lid;
    let own_c = atomicLoad(&h_cnt[b]);
    let own_m = vec2<u32>(atomicLoad(&h_hi[b]), atomicLoad(&h_lo[b]));
    s_cnt[lid] = own_c;
    s_hi[lid] = own_m.x;
    s_lo[lid] = own_m.y;
    scan256(lid, mass);
    if (mass && ps == 0u && lid == 0u) {
      w_target = mass_target(vec2<u32>(s_hi[WG - 1u], s_lo[WG - 1u]), p);
    }
    workgroupBarrier();
    // The bucket where the cumulative first reaches the target: exactly one thread finds it.
    let incl_c = above + s_cnt[lid];
    let excl_c = incl_c - own_c;
    var hit = false;
    var excl_m = vec2<u32>(0u, 0u);
    if (mass) {
      let incl_m = add64(mabove, vec2<u32>(s_hi[lid], s_lo[lid]));
      excl_m = sub64(incl_m, own_m);
      hit = ge64(incl_m, w_target) && !ge64(excl_m, w_target);
    } else {
      hit = incl_c >= n && excl_c < n;
    }
    workgroupBarrier();
    if (hit) {
      w_key = prefix | (b << shift);
      w_above = excl_c;
      w_mabove = excl_m;
      w_eq = own_c;
    }
    workgroupBarrier();
  }
}

// Id of the j-th smallest (1-based) token whose key equals `key` (NONE if there are fewer).
// Each thread takes a contiguous block of ids so that block order is id order.
fn nth_tie_id(base: u32, V: u32, lid: u32, key: u32, j: u32) -> u32 {
  let blk = (V + WG - 1u) / WG;
  let lo = min(lid * blk, V);
  let hi = min(lo + blk, V);
  var c = 0u;
  for (var v = lo; v < hi; v++) {
    if (okey(work[base + v]) == key) { c++; }
  }
  if (lid == 0u) { w_tie = NONE; }
  s_cnt[lid] = c;
  scan256(lid, false);
  let incl = s_cnt[lid];
  if (incl >= j && incl - c < j) {
    var r = j - (incl - c);
    for (var v = lo; v < hi; v++) {
      if (okey(work[base + v]) == key) {
        r--;
        if (r == 0u) { w_tie = v; break; }
      }
    }
  }
  workgroupBarrier();
  let t = w_tie;
  workgroupBarrier();
  return t;
}

// Cut keeping exactly the first n tokens in (z desc, id asc) order: a count-mode select plus the
// id limit among ties. Returns (key, id_lim).
fn rank_cut(base: u32, V: u32, lid: u32, n: u32) -> vec2<u32> {
  radix_select(base, V, lid, false, 0u, n, 0.0, 0.0);
  let key = w_key;
  let j = n - w_above;
  let eq = w_eq;
  let t = nth_tie_id(base, V, lid, key, j);
  return vec2<u32>(key, select(t, NONE, j >= eq));
}

// Steps 1-2b for token v of a row: its logit plus logit_bias, the repetition penalty, the hard bans.
fn biased(lbase: u32, base: u32, v: u32, P: RowParams, bans_on: vec2<bool>, ban_base: u32) -> f32 {
  var x = logits[lbase + v];
  if (P.bias_row != NONE) { x = x + bias[P.bias_row * g.V + v]; }
  if (counts[base + v] > 0u && P.rep != 1.0) { x = select(x / P.rep, x * P.rep, x < 0.0); }
  // 2b: bans_on = (the always-mask applies, the until-min mask applies); the row's two masks of
  // W words each start at ban_base.
  if (any(bans_on)) {
    let bit = 1u << (v & 31u);
    let w = ban_base + (v >> 5u);
    let W = (g.V + 31u) / 32u;
    if ((bans_on.x && (bans[w] & bit) != 0u) || (bans_on.y && (bans[w + W] & bit) != 0u)) { x = neg_inf(); }
  }
  return x;
}

// Steps 3-4: (x - shift) / temperature (not divided when greedy), then the frequency and presence
// penalties of a token seen c times. shift is 0 unless x / T would overflow (select_row).
fn tempered(x: f32, c: u32, P: RowParams, shift: f32) -> f32 {
  var z = x;
  if (P.temperature > 0.0) { z = (z - shift) / P.temperature; }
  if (c > 0u) { z = z - P.freq * f32(c) - P.pres; }
  return z;
}

@compute @workgroup_size(WG)
fn select_row(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * g.rows_per_y + wg.x;
  if (row >= g.rows) { return; }
  let V = g.V;
  let base = row * V;
  let lbase = g.logits_off + base;
  let P = params[row];
  if (lid == 0u) { w_u = state[row].finished; }
  if (workgroupUniformLoad(&w_u) != 0u) { return; }  // draw_row writes EOS for latched rows

  // 1-4: processed logits z, their max and argmax.
  let bans_on = vec2<bool>((P.ban_flags & 1u) != 0u, (P.ban_flags & 2u) != 0u && state[row].step < P.min_new);
  let ban_base = (row * 2u) * ((V + 31u) / 32u);
  var best = neg_inf();
  var best_i = NONE;
  var top = neg_inf();  // max of x before the temperature
  for (var v = lid; v < V; v += WG) {
    let x = biased(lbase, base, v, P, bans_on, ban_base);
    top = max(top, x);
    let z = tempered(x, counts[base + v], P, 0.0);
    work[base + v] = z;
    if (beats(z, v, best, best_i)) {
      best = z;
      best_i = v;
    }
  }
  storageBarrier();  // nth_tie_id reads elements other threads wrote
  reduce_argmax_sum(best, best_i, 0.0, lid);
  var m = r_val[0];
  var amax = select(r_id[0], 0u, r_id[0] == NONE);
  // 3 again for a tiny temperature, where x / T would overflow f32 (+-inf ties, or every token
  // -inf): z = (x - top) / T instead, the same distribution (softmax and every cut are invariant
  // to a shift), so that T -> 0 approaches greedy as it should.
  if (P.temperature > 0.0 && P.temperature < 1.0) {
    workgroupBarrier();  // every thread has read r_val[0]
    reduce_argmax_sum(top, 0u, 0.0, lid);
    let shift = r_val[0];
    if (lid == 0u) { w_u = select(0u, 1u, abs(shift) > P.temperature * 1e38 && abs(shift) <= 3.4e38); }
    if (workgroupUniformLoad(&w_u) != 0u) {
      best = neg_inf();
      best_i = NONE;
      for (var v = lid; v < V; v += WG) {
        let z = tempered(biased(lbase, base, v, P, bans_on, ban_base), counts[base + v], P, shift);
        work[base + v] = z;
        if (beats(z, v, best, best_i)) {
          best = z;
          best_i = v;
        }
      }
      storageBarrier();
      reduce_argmax_sum(best, best_i, 0.0, lid);
      m = r_val[0];
      amax = select(r_id[0], 0u, r_id[0] == NONE);
    }
  }

  var key = 0u;       // the empty cut keeps everything
  var id_lim = NONE;
  var min_p = 0.0;
  if (P.temperature > 0.0) {
    // 5: top-k keeps every token >= the k-th largest (ties kept).
    if (P.top_k > 0u) {
      radix_select(base, V, lid, false, 0u, P.top_k, 0.0, 0.0);
      key = w_key;
    }
    // 6: top-p over the softmax of the tokens top-k kept.
    if (P.top_p < 1.0) {
      radix_select(base, V, lid, true, key, 0u, m, P.top_p);
      if (lid == 0u) {
        // All tokens tied at the boundary key have the same mass q: take as many (smallest ids
        // first) as the cumulative needs to reach the target, j = ceil(need / q) exactly.
        let q = fixed40(exp(okey_inv(w_key) - m));
        let need = sub64(w_target, w_mabove);
        var j = w_eq;
        if (q.x != 0u || q.y != 0u) {
          j = clamp(u32(ceil(f32_of64(need) / f32_of64(q))), 1u, w_eq);
          if (j > 1u && ge64(mul64_32(q, j - 1u), need)) { j = j - 1u; }
          else if (j < w_eq && !ge64(mul64_32(q, j), need)) { j = j + 1u; }
        }
        w_u = w_above + j;  // tokens kept by top-p
        w_j = j;
      }
      let n_p = workgroupUniformLoad(&w_u);
      if (n_p < P.min_keep) {
        let c = rank_cut(base, V, lid, P.min_keep);
        key = c.x;
        id_lim = c.y;
      } else {
        let kp = w_key;
        let j = w_j;
        let eq = w_eq;
        let t = nth_tie_id(base, V, lid, kp, j);
        key = kp;
        id_lim = select(t, NONE, j >= eq);
      }
    }
    // 7: min-p drops tokens with exp(z - m) < min_p (prob < min_p * top prob), keeping min_keep.
    if (P.min_p > 0.0) {
      if (lid == 0u) { atomicStore(&w_count, 0u); }
      workgroupBarrier();
      var c = 0u;
      for (var v = lid; v < V; v += WG) {
        let z = work[base + v];
        if (in_cut(z, v, key, id_lim) && exp(z - m) >= P.min_p) { c++; }
      }
      atomicAdd(&w_count, c);
      workgroupBarrier();
      if (lid == 0u) { w_u = atomicLoad(&w_count); }
      let n_m = workgroupUniformLoad(&w_u);
      if (n_m >= P.min_keep) {
        min_p = P.min_p;
      } else {
        let rc = rank_cut(base, V, lid, P.min_keep);
        key = rc.x;
        id_lim = rc.y;
      }
    }
  }
  if (lid == 0u) {
    cuts[row] = Cut(m, key, id_lim, min_p, select(0u, 1u, P.temperature == 0.0), amax, 0u, 0u);
  }
}

@compute @workgroup_size(WG)
fn draw_row(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * g.rows_per_y + wg.x;
  if (row >= g.rows) { return; }
  let V = g.V;
  let base = row * V;
  let P = params[row];
  let st = state[row];
  let c = cuts[row];
  let fin = st.finished != 0u;
  let fixed = fin || c.greedy != 0u;
  let want_lp = (g.flags & 4u) != 0u;

  // 8: Gumbel-max over the kept tokens (z = -inf has probability 0 and never wins).
  var best = neg_inf();
  var best_i = NONE;
  var zsum = 0.0;
  if (!fixed) {
    for (var v = lid; v < V; v += WG) {
      let z = work[base + v];
      if (z > neg_inf() && is_kept(z, v, c)) {
        zsum += exp(z - c.m);
        let s = z + gumbel(P.seed_lo, P.seed_hi, st.step, v);
        if (beats(s, v, best, best_i)) {
          best = s;
          best_i = v;
        }
      }
    }
  } else if (want_lp && !fin) {
    // Greedy: the mass of every token (the cut keeps all), for the chosen token's log-prob.
    for (var v = lid; v < V; v += WG) {
      let z = work[base + v];
      if (z > neg_inf()) { zsum += exp(z - c.m); }
    }
  }
  reduce_argmax_sum(best, best_i, zsum, lid);
  var chosen = select(r_id[0], c.amax, fixed || r_id[0] == NONE);
  if (fin) { chosen = P.eos; }
  let total = r_sum[0];

  if ((g.flags & 1u) != 0u) {
    for (var v = lid; v < V; v += WG) {
      var pr = select(0.0, 1.0, v == chosen);
      if (!fixed) {
        let z = work[base + v];
        pr = select(0.0, exp(z - c.m) / total, z > neg_inf() && is_kept(z, v, c));
      }
      probs[base + v] = pr;
    }
  }
  if (lid == 0u) {
    out_ids[g.out_off + row] = chosen;
    if (want_lp) {
      // log(exp(z_chosen - m) / total); a finished row's draw is EOS by the latch: 0.
      lp_out[row] = select(work[base + chosen] - c.m - log(total), 0.0, fin);
    }
    if ((g.flags & 2u) != 0u && !fin) {
      counts[base + chosen] += 1u;
      state[row].step = st.step + 1u;
      if (P.stop_at_eos != 0u && chosen == P.eos) { state[row].finished = 1u; }
    }
  }
}

// Adds prompt ids to the counts of one row: aux = [row, n, ids...]. One invocation (a prompt is
// at most a few thousand ids, written once per generation).
@compute @workgroup_size(1)
fn add_counts() {
  let row = aux[0];
  let n = aux[1];
  for (var i = 0u; i < n; i++) {
    let id = aux[2u + i];
    if (id < g.V) { counts[row * g.V + id] += 1u; }
  }
}

// sample(): writes the ids of row 0's kept tokens with probability > 0 to aux, ascending
// (each thread compacts a contiguous block, placed by an exclusive scan of block counts).
@compute @workgroup_size(WG)
fn compact_row(@builtin(local_invocation_index) lid: u32) {
  let V = g.V;
  let c = cuts[0];
  let blk = (V + WG - 1u) / WG;
  let lo = min(lid * blk, V);
  let hi = min(lo + blk, V);
  var n = 0u;
  for (var v = lo; v < hi; v++) {
    let z = work[v];
    if (z > neg_inf() && is_kept(z, v, c)) { n++; }
  }
  s_cnt[lid] = n;
  scan256(lid, false);
  var o = s_cnt[lid] - n;
  for (var v = lo; v < hi; v++) {
    let z = work[v];
    if (z > neg_inf() && is_kept(z, v, c)) {
      aux[o] = v;
      o++;
    }
  }
  if (lid == WG - 1u) { cuts[0].n_kept = s_cnt[lid]; }
}

// sample(): one invocation per draw d (the Philox step), Gumbel-max over the compacted kept ids;
// hist[id] counts the draws. Draw d equals what draw_row picks at step d with the same cut.
@compute @workgroup_size(WG)
fn draw_many(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = (wg.y * g.rows_per_y + wg.x) * WG + lid;
  if (d >= g.ndraws) { return; }
  let c = cuts[0];
  let P = params[0];
  var chosen = c.amax;
  if (c.greedy == 0u) {
    var best = neg_inf();
    var best_i = NONE;
    for (var i = 0u; i < c.n_kept; i++) {
      let v = aux[i];
      let s = work[v] + gumbel(P.seed_lo, P.seed_hi, d, v);
      if (beats(s, v, best, best_i)) {
        best = s;
        best_i = v;
      }
    }
    if (best_i != NONE) { chosen = best_i; }
  }
  atomicAdd(&hist[chosen], 1u);
}
