// The prompt kernels of the attention (appended to attention.wgsl: bindings, Params, HD4, LANES,
// the one-query kernels and the qualification tests are that file's): runs of consecutive tokens
// of a row share each K/V load. prefill_lanes (CPU adapters: token pairs), the 'blocks' passes
// (CPU adapters, long prompts: matrix products through scratch buffers) and tiled_vec4 (GPUs:
// tiles of 8 tokens through workgroup memory). Each leaves the tokens it cannot share to a second
// dispatch of a one-query kernel.

// ---- prefill_lanes, for CPU adapters: one invocation per (token pair t0 = 2i, t1 = 2i + 1, head
// h), LANES per workgroup. On lavapipe every lane-varying storage load is a per-lane scalar loop,
// so the loads of K and V set the cost: when t1 follows t0 in the same row (pos1 = pos0 + 1) and
// the window has not wrapped (pos1 < cap, so key j sits at slot j), the invocation loads each key
// and value word once and applies it to both queries (key pos1 to t1 only): half the loads of
// decode_lanes per query. The tokens of any other pair (different rows, a wrapped ring, a row
// outside the cache) and an odd T's last token are left to a second dispatch, decode_lanes with
// pairs_skip = 1, which skips the rest. (Doing those tokens here by inlined calls would multiply
// llvmpipe's compile time, which grows with every copy of the unrolled per-lane loads.) Two
// tokens per invocation: more would no longer keep q / acc in registers. Needs kv_write to have
// run (no write_kv).

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
      let k = k4_at(kb, d);
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
      let v = v4_at(kb, d);
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
//     for every token of the block, also keys past a token's own position (ignored later). Lanes
//     run over tokens, not keys: st is transposed so that their stores are contiguous.
//   att_softmax: one invocation per (head, token), the lanes on neighbouring tokens (neighbouring
//     words of each st row): max, exp-sum and normalisation over keys 0..pos.
//   att_pv: a workgroup = (head h, block of QB tokens); lane l owns 2 vec4 words of the head's
//     output dims (l * 2, l * 2 + 1, then + 2 BL while D / 4 > 2 BL). Per key: 2 v words, 8 p
//     values (0 past a token's position), 16 vec4 FMAs.
// A block qualifies when its tokens share one valid row and every position is < cap (slot =
// position, keys 0..max pos); other tokens (rows mixed in a block, a wrapped ring, a row outside
// the cache) are left to decode_lanes with pairs_skip = 2, which skips the rest. No workgroup
// memory, no barriers. Loop bounds are runtime values (p.D), not the HD4 override, so LLVM does
// not unroll the head loops (llvmpipe's compile time grows with every unrolled copy).
// Needs kv_write to have run.

@group(0) @binding(6) var<storage, read_write> st: array<f32>;     // [n_head, cap, tc]: S, then P
@group(0) @binding(6) var<storage, read_write> st4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> qts: array<f32>;     // [n_head, D, tc]: q / sqrt(D)
@group(0) @binding(7) var<storage, read_write> qts4: array<vec4<f32>>;

const BL: u32 = 8u;  // lanes per workgroup of att_scores / att_pv (one 256-bit row of f32 on lavapipe)

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
        let kv = k_at(kb[e] + d);
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
      let va = v4_at(vbase + j * C4, w0);
      let vb = v4_at(vbase + j * C4, w1);
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
//   fallback is a separate dispatch because inlining attend_vec4 here makes llvmpipe's compile of
//   this pipeline very slow.)
//   Lanes: 4 per query (q = lid / 4, r = lid % 4); lane r owns output dims (as vec4 indices)
//   r, r + 4, r + 8, r + 12 (D <= 64) and keeps its own copy of the query's online-softmax state
//   (m, l), so no reduction over lanes is needed. Per block of TKB keys (3 barriers):
//   1. the workgroup copies K and V rows of keys b .. b + TKB - 1 into ks, vs (workgroup memory);
//   2. lane r scores keys r, r + 4, ... of the block for its query into ssc (keys after the
//      query's position are masked with LOWEST);
//   3. each lane reads its query's TKB scores, takes their max itself, rescales (m, l, acc) and
//      adds p_j * v_j for its dims.
//   Workgroup storage: ks + vs 8 KiB, qt 2 KiB, ssc 0.5 KiB at WG = 32.

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
      let kb = head_base + (b + j) * C4;
      ks[e] = k4_at(kb, e - j * D4);
      vs[e] = v4_at(kb, e - j * D4);
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
