// Attention on CPU adapters whose subgroups hold at least 4 invocations (lavapipe: 8,
// SwiftShader: 4), a subgroup per (query or block of queries, head). out[t, head h] =
// softmax(q_t . K / sqrt(D)) V over t's window of the ring cache, as decode_lanes computes it.
//   decode_sg   one query per workgroup: decode steps (write_kv as in decode_lanes) and single
//               tokens.
//   prefill_sg  QS consecutive tokens of a prompt per workgroup: every K / V word it loads serves
//               all QS queries; a block whose tokens are not all in one row inside the capacity
//               (two prompts, a wrapped ring) takes its tokens one at a time instead
//               (sg_attend_one). Needs kv_write to have run for the step.
// This file is appended to attention.wgsl (bindings, Params, HD4, LOWEST are that file's); the
// engine builds it only where the device profile names it (a device with the `subgroups` feature).
//
// Why: the one-invocation kernels (decode_lanes, prefill_lanes) give one invocation a whole
// (query, head): q and the accumulator are 2 x HD4 vec4 per query (128 floats at D 64), which
// llvmpipe holds as SIMD registers per float and spills, and its lane-varying K / V loads are
// gathered lane by lane. Here the SGA invocations of a subgroup share a (query block, head):
// invocation i owns head words i, i + SGA, ... (WPL of them), so per key it loads WPL words of K
// and WPL of V for all QS queries, each query's part of the dot product goes through subgroupAdd
// (a vector reduction, no memory), and the online softmax (m, l, alpha, p_j) is the same value in
// every invocation. No scratch memory.
//
// Work split: workgroup = SGA invocations = one subgroup (SGA <= the device's subgroup size),
// workgroup index (wg.y * groups_x + wg.x) = query block * n_head + h. A head word past HD4
// (HD4 not a multiple of SGA) is read clamped with q = 0, so it adds nothing, and is never
// stored. No workgroup memory, no barriers (lavapipe runs shaders with barriers as coroutines).
// Every invocation of a workgroup takes the same branches (they depend on the workgroup's
// tokens and head only), as subgroupAdd needs.

enable subgroups;

override SGA: u32 = 8u;  // invocations per workgroup (= one subgroup), 4 or 8
override WPL: u32 = 4u;  // head words per invocation, ceil(HD4 / SGA), 1 ..= WPL_MAX
override QS: u32 = 8u;   // prefill_sg: queries (consecutive tokens) per workgroup, 1 ..= QS_MAX

const WPL_MAX = 16u;  // MAX_D / 4 / 4: SGA is at least 4
const QS_MAX = 8u;

// Query t, head h, by the SGA invocations of this subgroup (lane: this one's index): the online
// softmax over t's window, one key at a time; NaN for a row outside the cache.
fn sg_attend_one(t: u32, h: u32, lane: u32) {
  let row = tok_meta[2u * t];
  let pos = tok_meta[2u * t + 1u];
  let C4 = p.C / 4u;
  let qb = t * 3u * C4 + h * HD4;
  let ob = t * C4 + h * HD4;
  if (row >= p.rows) {
    for (var k = 0u; k < WPL; k++) {
      let d = lane + k * SGA;
      if (d < HD4) { out4[ob + d] = vec4<f32>(bitcast<f32>(p.nan_bits)); }
    }
    return;
  }
  let n = min(pos + 1u, p.cap);
  var slot = (pos + 1u - n) % p.cap;  // the window's first slot; runs on, wrapping once at cap
  let head_base = row * p.cap * C4 + h * HD4;  // + slot * C4 + head word
  var q: array<vec4<f32>, WPL_MAX>;    // q * scale for this invocation's words, [WPL] used
  var acc: array<vec4<f32>, WPL_MAX>;  // sum of p_j v_j against the running max, [WPL] used
  var dw: array<u32, WPL_MAX>;         // the words' offsets in the head, clamped to HD4 - 1
  for (var k = 0u; k < WPL; k++) {
    let d = lane + k * SGA;
    dw[k] = min(d, HD4 - 1u);
    q[k] = select(vec4<f32>(0.0), qkv4[qb + dw[k]] * p.scale, d < HD4);
    acc[k] = vec4<f32>(0.0);
  }
  var m = LOWEST;
  var l = 0.0;
  for (var j = 0u; j < n; j++) {
    let kb = head_base + slot * C4;
    var part = 0.0;
    for (var k = 0u; k < WPL; k++) { part += dot(q[k], k4_at(kb, dw[k])); }
    let s = subgroupAdd(part);  // the whole head's q . k_j
    let m_new = max(m, s);
    let alpha = exp(m - m_new);
    let pj = exp(s - m_new);
    l = l * alpha + pj;
    for (var k = 0u; k < WPL; k++) { acc[k] = acc[k] * alpha + pj * v4_at(kb, dw[k]); }
    m = m_new;
    slot += 1u;
    if (slot == p.cap) { slot = 0u; }
  }
  for (var k = 0u; k < WPL; k++) {
    let d = lane + k * SGA;
    if (d < HD4) { out4[ob + d] = acc[k] / l; }
  }
}

@compute @workgroup_size(SGA)
fn decode_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let w = wg.y * p.groups_x + wg.x;
  if (w >= p.T * p.n_head) { return; }  // the whole workgroup: w is uniform
  let t = w / p.n_head;
  let h = w - t * p.n_head;
  let row = tok_meta[2u * t];
  if (p.write_kv == 1u && row < p.rows) {
    // f32: invocation `lane` copies head groups lane, lane + SGA, ..., exactly the ones it reads
    // back in sg_attend_one (program order within an invocation). f16: it copies words (two groups
    // each) that other invocations read, and with HD4 % SGA != 0 an invocation past the head reads
    // the last group (clamped): then the barrier below orders the copies before the reads.
    let pos = tok_meta[2u * t + 1u];
    let C4 = p.C / 4u;
    kv_put((row * p.cap + pos % p.cap) * C4 + h * HD4, t * 3u * C4 + C4 + h * HD4, HD4, lane, SGA);
  }
  if (KV_F16 || HD4 % SGA != 0u) { storageBarrier(); }
  sg_attend_one(t, h, lane);
}

@compute @workgroup_size(SGA)
fn prefill_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let w = wg.y * p.groups_x + wg.x;
  let blocks = (p.T + QS - 1u) / QS;
  if (w >= blocks * p.n_head) { return; }
  let b = w / p.n_head;
  let h = w - b * p.n_head;
  let t0 = b * QS;
  let nq = min(QS, p.T - t0);  // the last block may be partial
  // The block shares loads when its tokens share a valid row and every position is < cap: then
  // key j sits at slot j and query i attends to keys 0 ..= pos_i, a prefix of 0 .. n - 1.
  let row = tok_meta[2u * t0];
  var ok = row < p.rows;
  var n = 0u;
  var pq: array<u32, QS_MAX>;  // the queries' positions
  for (var i = 0u; i < QS; i++) {
    let ti = min(t0 + i, p.T - 1u);  // past a partial block: the last token again (never live)
    let pos = tok_meta[2u * ti + 1u];
    pq[i] = pos;
    if (i < nq) {
      ok = ok && tok_meta[2u * ti] == row && pos < p.cap;
      n = max(n, pos + 1u);
    }
  }
  if (!ok) {
    for (var i = 0u; i < nq; i++) { sg_attend_one(t0 + i, h, lane); }
    return;
  }
  let C4 = p.C / 4u;
  let head_base = row * p.cap * C4 + h * HD4;  // + j * C4 + head word
  var q: array<array<vec4<f32>, WPL_MAX>, QS_MAX>;    // [QS][WPL] q * scale
  var acc: array<array<vec4<f32>, WPL_MAX>, QS_MAX>;  // [QS][WPL] sum of p_j v_j
  var m: array<f32, QS_MAX>;  // running maxima
  var l: array<f32, QS_MAX>;  // running denominators
  var dw: array<u32, WPL_MAX>;
  for (var k = 0u; k < WPL; k++) { dw[k] = min(lane + k * SGA, HD4 - 1u); }
  for (var i = 0u; i < QS; i++) {
    let qb = min(t0 + i, p.T - 1u) * 3u * C4 + h * HD4;
    for (var k = 0u; k < WPL; k++) {
      q[i][k] = select(vec4<f32>(0.0), qkv4[qb + dw[k]] * p.scale, lane + k * SGA < HD4);
      acc[i][k] = vec4<f32>(0.0);
    }
    m[i] = LOWEST;
    l[i] = 0.0;
  }
  for (var j = 0u; j < n; j++) {
    let kb = head_base + j * C4;
    var kw: array<vec4<f32>, WPL_MAX>;
    for (var k = 0u; k < WPL; k++) { kw[k] = k4_at(kb, dw[k]); }
    var alpha: array<f32, QS_MAX>;
    var pj: array<f32, QS_MAX>;
    for (var i = 0u; i < QS; i++) {
      var part = 0.0;
      for (var k = 0u; k < WPL; k++) { part += dot(q[i][k], kw[k]); }
      let s = subgroupAdd(part);
      // Key j is in query i's window when j <= pos_i; a query outside it (or past a partial
      // block) keeps its state: alpha 1, p_j 0. Key 0 is in every window, so m is finite after it.
      let live = i < nq && j <= pq[i];
      let m_new = max(m[i], s);
      alpha[i] = select(1.0, exp(m[i] - m_new), live);
      pj[i] = select(0.0, exp(s - m_new), live);
      l[i] = l[i] * alpha[i] + pj[i];
      m[i] = select(m[i], m_new, live);
    }
    var vw: array<vec4<f32>, WPL_MAX>;
    for (var k = 0u; k < WPL; k++) { vw[k] = v4_at(kb, dw[k]); }
    for (var i = 0u; i < QS; i++) {
      for (var k = 0u; k < WPL; k++) { acc[i][k] = acc[i][k] * alpha[i] + pj[i] * vw[k]; }
    }
  }
  for (var i = 0u; i < nq; i++) {
    let ob = (t0 + i) * C4 + h * HD4;
    for (var k = 0u; k < WPL; k++) {
      let d = lane + k * SGA;
      if (d < HD4) { out4[ob + d] = acc[i][k] / l[i]; }
    }
  }
}
