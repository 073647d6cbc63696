// decode_sg: attention for decode steps (one query per row; any single-token step) on CPU adapters
// whose subgroups hold at least 4 invocations (lavapipe: 8, SwiftShader: 4). out[t, head h] =
// softmax(q_t . K / sqrt(D)) V over t's window of the ring cache, as decode_lanes computes it;
// write_kv as there. This file is appended to attention.wgsl (bindings, Params, HD4, LOWEST are
// that file's); the engine builds it only where the device has the `subgroups` feature.
//
// Why: decode_lanes gives one invocation a whole (query, head): q and the accumulator are 2 x HD4
// vec4 per invocation (128 floats at D 64), which llvmpipe holds as SIMD registers per float and
// spills, and its lane-varying K / V loads are gathered lane by lane. Here a subgroup of SGA
// invocations shares one (query, head): invocation i owns head words i, i + SGA, ... (WPL of them,
// 2 vec4 of q and 2 of the accumulator at D 64 with SGA 8), so per key it loads WPL words of K and
// WPL of V, its part of the dot product goes through subgroupAdd (a vector reduction, no memory),
// and the online softmax (m, l, alpha, p_j) is the same value in every invocation. Measured on
// lavapipe against decode_lanes (2 per workgroup), one layer, 12 heads, D 64: batch 16 at
// position 400 and batch 64 at 128-300 1.5-2x faster with SGA 4, 1.2-1.5x with SGA 8
// (BENCHMARKS.md notes).
//
// Work split: workgroup = SGA invocations = one subgroup (SGA <= the device's subgroup size),
// workgroup index (wg.y * groups_x + wg.x) = t * n_head + h. A head word past HD4 (HD4 not a
// multiple of SGA) is read clamped with q = 0, so it adds nothing, and is never stored. No
// workgroup memory, no barriers (lavapipe runs shaders with barriers as coroutines). Every
// invocation of a workgroup takes the same branches (they depend on t and h only), as
// subgroupAdd needs.

enable subgroups;

override SGA: u32 = 4u;  // decode_sg: invocations per (query, head) = per workgroup, at most the subgroup size
override WPL: u32 = 4u;  // decode_sg: head words per invocation, ceil(HD4 / SGA), 1 ..= WPL_MAX

const WPL_MAX = 64u;  // MAX_D / 4: one invocation may hold the whole head (SGA 1)

@compute @workgroup_size(SGA)
fn decode_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let w = wg.y * p.groups_x + wg.x;
  if (w >= p.T * p.n_head) { return; }
  let t = w / p.n_head;
  let h = w - t * p.n_head;
  let row = tok_meta[2u * t];
  let pos = tok_meta[2u * t + 1u];
  let C4 = p.C / 4u;
  let qb = t * 3u * C4 + h * HD4;  // q; + C4: k, + 2 C4: v
  let ob = t * C4 + h * HD4;
  if (row >= p.rows) {
    for (var i = 0u; i < WPL; i++) {
      let d = lane + i * SGA;
      if (d < HD4) { out4[ob + d] = vec4<f32>(bitcast<f32>(p.nan_bits)); }
    }
    return;
  }
  if (p.write_kv == 1u) {
    // Each invocation copies the words it reads back below (program order within an invocation).
    let dst = (row * p.cap + pos % p.cap) * C4 + h * HD4;
    for (var i = 0u; i < WPL; i++) {
      let d = lane + i * SGA;
      if (d < HD4) {
        k4[dst + d] = qkv4[qb + C4 + d];
        v4[dst + d] = qkv4[qb + 2u * C4 + d];
      }
    }
  }
  let n = min(pos + 1u, p.cap);
  var slot = (pos + 1u - n) % p.cap;  // the window's first slot; runs on, wrapping once at cap
  let head_base = row * p.cap * C4 + h * HD4;  // + slot * C4 + d
  var q: array<vec4<f32>, WPL_MAX>;    // q * scale for this invocation's words, [WPL] used
  var acc: array<vec4<f32>, WPL_MAX>;  // sum of p_j v_j against the running max, [WPL] used
  var dw: array<u32, WPL_MAX>;         // the words' offsets in the head, clamped to HD4 - 1
  for (var i = 0u; i < WPL; i++) {
    let d = lane + i * SGA;
    dw[i] = min(d, HD4 - 1u);
    q[i] = select(vec4<f32>(0.0), qkv4[qb + dw[i]] * p.scale, d < HD4);
    acc[i] = vec4<f32>(0.0);
  }
  var m = LOWEST;
  var l = 0.0;
  for (var j = 0u; j < n; j++) {
    let kb = head_base + slot * C4;
    var part = 0.0;
    for (var i = 0u; i < WPL; i++) { part += dot(q[i], k4[kb + dw[i]]); }
    let s = subgroupAdd(part);  // the whole head's q . k_j
    let m_new = max(m, s);
    let alpha = exp(m - m_new);
    let pj = exp(s - m_new);
    l = l * alpha + pj;
    for (var i = 0u; i < WPL; i++) { acc[i] = acc[i] * alpha + pj * v4[kb + dw[i]]; }
    m = m_new;
    slot += 1u;
    if (slot == p.cap) { slot = 0u; }
  }
  for (var i = 0u; i < WPL; i++) {
    let d = lane + i * SGA;
    if (d < HD4) { out4[ob + d] = acc[i] / l; }
  }
}
