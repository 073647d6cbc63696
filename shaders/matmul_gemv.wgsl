// The GEMVs of the linear layers (appended to matmul.wgsl: bindings, Params and `finish` are
// that file's). W is read once per block of rows of x, so they serve decode steps (M <= 8 rows on
// GPUs) and, on CPU adapters, every M (there a workgroup-memory tile costs more than it saves).
//   gemv_kn  W[K, N]: each thread owns CPT adjacent columns (4 for f32, 8 for f16 = one 16-byte
//            load per k) and walks one K slice; workgroups tile columns (x), K slices (y) and
//            blocks of MAXM rows of x (z). gemv_kn_ln: the same with the layer-norm prologue.
//   gemv_kn_red  the same GEMV with K split over KG groups of each workgroup's threads, their
//            sums added in workgroup memory: no `reduce` dispatch (prologue by flag).
//   gemv_nk  W[N, K]: LPR lanes share one W row and stride along K with 16-byte loads (coalesced
//            along the contiguous dimension); their partials meet in workgroup memory. Workgroups
//            tile W rows (x), K slices (y), blocks of MAXM rows of x (z).
//   gemv_kn_cols  W[K, N], for CPU adapters (VEC only): each thread owns KNV adjacent 16-byte
//            words of a W row for KNM rows of x (wid.z: blocks of KNM rows) and walks its K
//            slice; each (uniform, scalar) x load is shared by KNV lane-varying W loads, which
//            CPU adapters turn into gathers, each W load by KNM rows of x.
//   reduce   finishes a split-K GEMV: sums the S partials [S, M, ldo] and applies the epilogue.
// Layer-norm prologue (gemv_kn_ln, gemv_kn_red; flags & F_LN): x is read as
// LN(x)[m, k] = (x[m, k] - mean_m) * rstd_m * ln_g[k] + ln_b[k], the statistics of the block's rows
// computed by each workgroup first, cooperatively through workgroup memory. Where the profile
// fuses it (GPUs) this replaces the layer-norm dispatch (and its [M, K] round trip) before c_attn
// and c_fc in decode; elsewhere the host runs the layernorm kernel first (CPU adapters, whose
// per-workgroup statistics and per-k normalisation are per-lane work).
// VEC selects unit loads (w_unit: 16-byte words for f32 / f16, one or two words for q4 / q8) and
// x through its vec4 view; the host sets it only when rows are whole units (kn: N % 4 (f32) /
// N % 8 (others); nk: K % 4 / K % 8), otherwise the scalar path reads single elements with bounds
// checks. q4 scales: per element in gemv_kn, gemv_kn_red, gemv_nk; per group of 32 k in
// gemv_kn_cols (raw sums of a group, then scaled once).

override VEC: bool = false;
override WG: u32 = 64u;   // threads per workgroup
override KNV: u32 = 8u;   // gemv_kn_cols: 16-byte W words per thread, 1 ..= KNV_MAX (f16: 1 ..= KNV_MAX / 2)
override KNM: u32 = 1u;   // gemv_kn_cols: rows of x per thread, 1 ..= KNM_MAX, KNM * KNV (f16: * 2) <= KNACC_MAX
override KG: u32 = 64u;   // gemv_kn_red: K groups per workgroup, a power of two dividing WG

const MAXM = 8u;  // rows of x per gemv_kn / gemv_nk workgroup (register accumulators per thread)
const LPR = 32u;  // gemv_nk: lanes per W row, a power of two >= MAXM dividing WG
const KNV_MAX = 8u;  // gemv_kn_cols: 16-byte W words per thread
const KNM_MAX = 8u;  // gemv_kn_cols: rows of x per thread
const KNACC_MAX = 16u;  // gemv_kn_cols: vec4 accumulators per thread (f16 words need two each)

var<workgroup> red: array<f32, MAXM * (WG + WG / LPR)>;  // gemv_nk: lane partials [MAXM][rows][LPR + 1]; LN statistics; gemv_kn_red: [WG][4]
var<workgroup> ln_st: array<vec2<f32>, MAXM>;    // gemv_kn_ln, gemv_kn_red: (mean, rstd) of the block's x rows

// Layer-norm statistics (mean, 1 / sqrt(var + eps)) of x rows m0 .. m0 + mc - 1 (mc <= MAXM) into
// ln_st, computed by the WG threads of a workgroup together: thread t sums elements t, t + WG, ...
// of each row into red[i * WG + t], then a tree over t (WG a power of two). Two phases, as the
// layernorm kernel (no E[x^2] - E[x]^2 cancellation): 0 gives the means, 1 the squared deviations
// from them. Must be called from uniform control flow (barriers).
fn ln_stats_coop(m0: u32, mc: u32, t: u32) {
  for (var ph = 0u; ph < 2u; ph++) {
    for (var i = 0u; i < MAXM; i++) {
      var v = 0.0;
      if (i < mc) {
        let base = (m0 + i) * p.K;
        let mean = select(0.0, ln_st[i].x, ph == 1u);
        for (var k = t; k < p.K; k += WG) {
          let d = x[base + k] - mean;
          v += select(d, d * d, ph == 1u);
        }
      }
      red[i * WG + t] = v;
    }
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
      if (t < h) {
        for (var i = 0u; i < MAXM; i++) { red[i * WG + t] += red[i * WG + t + h]; }
      }
      workgroupBarrier();
    }
    if (t == 0u) {
      for (var i = 0u; i < MAXM; i++) {
        let avg = red[i * WG] / f32(p.K);
        if (ph == 0u) { ln_st[i] = vec2<f32>(avg, 0.0); } else { ln_st[i].y = inverseSqrt(avg + p.eps); }
      }
    }
    workgroupBarrier();
  }
}

// ---------------------------------------------------------------------------------------------
// gemv_kn: W[K, N]. Thread g owns columns [g*CPT, g*CPT + CPT); wid.y is the K slice, wid.z the
// block of MAXM rows of x. No workgroup memory and no barriers, so out-of-range threads just leave.
// gemv_kn_ln is the same GEMV with the layer-norm prologue: its statistics need barriers, which
// CPU adapters run as coroutine switches that slow the whole shader, so the plain entry point
// stays barrier-free.
@compute @workgroup_size(WG)
fn gemv_kn(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  var st: array<vec2<f32>, MAXM>;
  gemv_kn_body(gid, wid, st);
}

@compute @workgroup_size(WG)
fn gemv_kn_ln(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let m0 = wid.z * MAXM;
  ln_stats_coop(m0, min(MAXM, p.M - m0), lid);
  var st: array<vec2<f32>, MAXM>;
  for (var i = 0u; i < MAXM; i++) { st[i] = ln_st[i]; }
  gemv_kn_body(gid, wid, st);
}

// st: [i] layer-norm (mean, rstd) of x row m0 + i, read when flags & F_LN.
fn gemv_kn_body(gid: vec3<u32>, wid: vec3<u32>, st: array<vec2<f32>, MAXM>) {
  let m0 = wid.z * MAXM;
  let mc = min(MAXM, p.M - m0);
  let cpt = select(4u, 8u, w_wide());
  let c0 = gid.x * cpt;
  if (c0 >= p.N) { return; }
  let s = wid.y;
  let k0 = s * p.kslice;
  let k1 = min(k0 + p.kslice, p.K);
  var stv = st;
  var lo: array<vec4<f32>, MAXM>;  // [m] sums for columns c0 .. c0+3
  var hi: array<vec4<f32>, MAXM>;  // [m] sums for columns c0+4 .. c0+7 (f16 only)
  for (var k = k0; k < k1; k++) { kn_step(k, gid.x, m0, mc, &stv, &lo, &hi); }
  for (var i = 0u; i < mc; i++) {
    for (var c = 0u; c < 4u; c++) {
      if (c0 + c < p.N) { finish(m0 + i, c0 + c, s, lo[i][c]); }
      if (w_wide() && c0 + 4u + c < p.N) { finish(m0 + i, c0 + 4u + c, s, hi[i][c]); }
    }
  }
}

// One k of the 'kn' GEMVs gemv_kn and gemv_kn_red: W row k, unit g (columns g*CPT ..
// g*CPT + CPT - 1, each read as 0 past N on the scalar path; q4: times its scales), times
// x[m0 + i, k] (layer-normed with st[i] when flags & F_LN), added to lo[i] (the first 4 columns)
// and hi[i] (8-column units: the next 4) for the block's mc rows.
fn kn_step(k: u32, g: u32, m0: u32, mc: u32, st: ptr<function, array<vec2<f32>, MAXM>>,
           lo: ptr<function, array<vec4<f32>, MAXM>>, hi: ptr<function, array<vec4<f32>, MAXM>>) {
  var wl: vec4<f32>;
  var wh = vec4<f32>(0.0);
  if (VEC) {
    let q = w_unit(k * w_upr() + g);  // VEC only: whole units per row
    wl = q.lo;
    wh = q.hi;
  } else {
    let c0 = g * select(4u, 8u, w_wide());
    wl = vec4<f32>(w_elem(k, c0, p.N, p.K), w_elem(k, c0 + 1u, p.N, p.K),
                   w_elem(k, c0 + 2u, p.N, p.K), w_elem(k, c0 + 3u, p.N, p.K));
    if (w_wide()) {
      wh = vec4<f32>(w_elem(k, c0 + 4u, p.N, p.K), w_elem(k, c0 + 5u, p.N, p.K),
                     w_elem(k, c0 + 6u, p.N, p.K), w_elem(k, c0 + 7u, p.N, p.K));
    }
  }
  if (W_FMT == 3u) {
    let sc = w_qs8(k, g * 8u);
    wl *= sc.lo;
    wh *= sc.hi;
  }
  // x[m, k] is the same address for every thread of the workgroup: a broadcast load.
  let ln = (p.flags & F_LN) != 0u;
  var g_ln = 1.0;
  var b_ln = 0.0;
  if (ln) { g_ln = ln_g[k]; b_ln = ln_b[k]; }
  for (var i = 0u; i < MAXM; i++) {
    if (i < mc) {
      var xv = x[(m0 + i) * p.K + k];
      if (ln) { xv = (xv - (*st)[i].x) * (*st)[i].y * g_ln + b_ln; }
      (*lo)[i] += xv * wl;
      if (w_wide()) { (*hi)[i] += xv * wh; }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// gemv_kn_red: W[K, N] with K split inside each workgroup rather than across workgroups, so no
// `reduce` dispatch follows (MatmulOptions.gemvReduce 'workgroup'; a decode step then has one
// dispatch per linear layer instead of two). The WG threads form KG groups of CT = WG / KG
// column threads: thread t is column thread g = wid.x * CT + t % CT (16-byte word g of each W
// row, as in gemv_kn) of group j = t / CT, and walks rows k0 + j, k0 + j + KG, ... of its slice, so
// one step of a 32-thread warp reads CT adjacent words from each of 32 / CT consecutive rows
// (CT = 4: 64 contiguous bytes per row). The KG partial sums of a column then meet in workgroup
// memory, one x row (and f16 half) at a time: each thread stores its vec4, a tree halves the
// groups (log2 KG barriers), group 0 applies the epilogue. Threads past N load nothing but reach
// every barrier. The layer-norm prologue (flags & F_LN) runs first, as in gemv_kn_ln. wid.y > 0
// (a split-K the host was asked for) writes partials for `reduce` like the other GEMVs.
@compute @workgroup_size(WG)
fn gemv_kn_red(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let m0 = wid.z * MAXM;
  let mc = min(MAXM, p.M - m0);
  var st: array<vec2<f32>, MAXM>;
  if ((p.flags & F_LN) != 0u) {
    ln_stats_coop(m0, mc, t);
    for (var i = 0u; i < MAXM; i++) { st[i] = ln_st[i]; }
  }
  let CT = WG / KG;
  let g = wid.x * CT + t % CT;
  let grp = t / CT;
  let c0 = g * select(4u, 8u, w_wide());
  let live = c0 < p.N;
  let s = wid.y;
  let k1 = min(s * p.kslice + p.kslice, p.K);
  var lo: array<vec4<f32>, MAXM>;
  var hi: array<vec4<f32>, MAXM>;
  if (live) {
    for (var k = s * p.kslice + grp; k < k1; k += KG) { kn_step(k, g, m0, mc, &st, &lo, &hi); }
  }
  // red[4t .. 4t + 3]: thread t's vec4 of the current row / half (4 * WG <= red's MAXM * WG words).
  for (var i = 0u; i < mc; i++) {
    for (var half = 0u; half < select(1u, 2u, w_wide()); half++) {
      let v = select(lo[i], hi[i], half == 1u);
      for (var c = 0u; c < 4u; c++) { red[4u * t + c] = v[c]; }
      workgroupBarrier();
      for (var h = KG / 2u; h > 0u; h >>= 1u) {
        if (grp < h) {
          for (var c = 0u; c < 4u; c++) { red[4u * t + c] += red[4u * (t + h * CT) + c]; }
        }
        workgroupBarrier();
      }
      // Only thread t writes red[4t ..] in the next round's store, and every read of the tree
      // above came before its last barrier: no barrier is needed after these reads.
      if (grp == 0u && live) {
        for (var c = 0u; c < 4u; c++) {
          let col = c0 + 4u * half + c;
          if (col < p.N) { finish(m0 + i, col, s, red[4u * t + c]); }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// gemv_nk: W[N, K] (rows = out columns). A workgroup covers WG / LPR rows; the LPR lanes of a row
// stride over its K slice (16-byte loads on the VEC path: 4 f32 or 8 f16 per load), then reduce.
@compute @workgroup_size(WG)
fn gemv_nk(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let lane = t % LPR;
  let row = wid.x * (WG / LPR) + t / LPR;
  let s = wid.y;
  let k0 = s * p.kslice;
  let k1 = min(k0 + p.kslice, p.K);
  let m0 = wid.z * MAXM;
  let mc = min(MAXM, p.M - m0);
  var acc: array<f32, MAXM>;
  // No early return: every thread must reach the barriers below.
  if (row < p.N) {
    if (VEC) {
      let xrow = p.K / 4u;  // vec4 per x row (VEC only: K % 4 == 0)
      if (w_wide()) {
        // One unit = 8 elements = two vec4 of x. Slices start at multiples of 8.
        let wrow = row * w_upr();
        for (var j = k0 / 8u + lane; j < k1 / 8u; j += LPR) {
          let q = w_unit(wrow + j);
          let sc = w_qs(8u * j, row);  // a unit lies in one q4 group
          let wl = q.lo * sc;
          let wh = q.hi * sc;
          for (var i = 0u; i < MAXM; i++) {
            if (i < mc) {
              let xb = (m0 + i) * xrow + 2u * j;
              acc[i] += dot(wl, x4[xb]) + dot(wh, x4[xb + 1u]);
            }
          }
        }
      } else {
        let wrow = row * (p.wpr / 4u);
        for (var j = k0 / 4u + lane; j < k1 / 4u; j += LPR) {
          let wv = bitcast<vec4<f32>>(w4[wrow + j]);
          for (var i = 0u; i < MAXM; i++) {
            if (i < mc) { acc[i] += dot(wv, x4[(m0 + i) * xrow + j]); }
          }
        }
      }
    } else {
      for (var k = k0 + lane; k < k1; k += LPR) {
        let wv = w_elem(row, k, p.K, p.N) * w_qs(k, row);
        for (var i = 0u; i < MAXM; i++) {
          if (i < mc) { acc[i] += wv * x[(m0 + i) * p.K + k]; }
        }
      }
    }
  }
  // red[i][r][lane], rows padded to LPR + 1 words so that the reads below (consecutive threads =
  // consecutive rows r) fall in different banks.
  let rpw = WG / LPR;
  let plane = WG + rpw;
  let slot = (t / LPR) * (LPR + 1u) + lane;
  for (var i = 0u; i < MAXM; i++) {
    if (i < mc) { red[i * plane + slot] = acc[i]; }
  }
  workgroupBarrier();
  // Thread t finishes (x row i, W row r) = (t / rpw, t % rpw) by summing that row's LPR lane
  // partials: one barrier, and one copy of the epilogue (lavapipe compiles unrolled code slowly).
  // Needs rpw * MAXM <= WG, i.e. LPR >= MAXM.
  let i = t / rpw;
  let r = t % rpw;
  let fr = wid.x * rpw + r;
  if (i < mc && fr < p.N) {
    var v = 0.0;
    for (var l = 0u; l < LPR; l++) { v += red[i * plane + r * (LPR + 1u) + l]; }
    finish(m0 + i, fr, s, v);
  }
}

// ---------------------------------------------------------------------------------------------
// gemv_kn_cols: W[K, N] with rows of whole units (w_unit: 4 f32 or 8 f16 / q8 / q4 columns).
// Thread g owns the units [g*KNV, g*KNV + KNV) of each W row (units past the row end reload its
// last unit, whose result is then not stored) for the KNM rows [wid.z*KNM, wid.z*KNM + KNM) of x
// (rows past M reload row M - 1, likewise not stored); wid.y is the K slice. Each W unit loaded
// feeds KNM rows, each x load KNV units: KNM * KNV * (1 or 2) vec4 accumulators <= KNACC_MAX. No
// workgroup memory, no barriers: threads past the row just leave.
// W is either plain row-major or in panels (p.pw != 0): the columns cut into panels of pw units,
// each panel stored whole as [K, pw] (the last one zero-padded; w_upr() = ceil(N / cpu) units of a
// row then count that padding up to the next unit), so that a workgroup, whose threads share a
// panel, streams one contiguous block instead of a short piece of every long row (CPU prefetchers
// lose such strided streams at page edges). The host checks pw % KNV == 0, so a thread's units
// never straddle two panels.
// q4: K is walked in its groups of 32 (the slice starts on one): a group's raw sums collect in
// `acc`, then are added times the group's scales to `tot` (one multiply per 32 k).
// Whether gemv_kn_cols reads a thread's units through 16-byte loads of their words: q8 / q4 in
// panels (pw != 0), whose thread units are contiguous and start on a multiple of KNV units (the
// host checks pw % KNV == 0; base and stride are multiples of pw or of KNV), with KNV units a whole
// number of 16-byte words. f32 and f16 units are such words already.
fn wide_words(pw: u32) -> bool {
  return W_FMT >= 2u && pw != 0u && (KNV * w_uw()) % 4u == 0u;
}

@compute @workgroup_size(WG)
fn gemv_kn_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let vrow = w_upr();  // units per W row
  let v0 = gid.x * KNV;
  if (v0 >= vrow) { return; }
  let s = wid.y;
  let k0 = s * p.kslice;
  let k1 = min(k0 + p.kslice, p.K);
  let m0 = wid.z * KNM;
  // Unit w of W row k is at base + k * stride + (w - v0) for the thread's units w = v0 + v.
  let pw = p.pw;
  var base = v0;
  var stride = vrow;
  if (pw != 0u) {
    base = (v0 / pw) * p.K * pw + v0 % pw;
    stride = pw;
  }
  var wv: array<u32, KNV_MAX>;  // [v] offset of owned unit v from the thread's first (plain: clamped to the row)
  for (var v = 0u; v < KNV; v++) { wv[v] = select(min(v0 + v, vrow - 1u) - v0, v, pw != 0u); }
  var xr: array<u32, KNM_MAX>;  // [i] first element of x row m0 + i (uniform over the workgroup)
  for (var i = 0u; i < KNM; i++) { xr[i] = min(m0 + i, p.M - 1u) * p.K; }
  // Accumulators per x row: a 4-column unit v -> acc[v]; an 8-column one -> acc[2v] (low 4), acc[2v + 1] (high 4)
  let apr = select(KNV, 2u * KNV, w_wide());
  var acc: array<vec4<f32>, KNACC_MAX>;  // [i][a], row-major: x row i, accumulator a
  var tot: array<vec4<f32>, KNACC_MAX>;  // q4: the scaled sums of the groups done
  let gs = select(k1 - k0, 32u, W_FMT == 3u);
  for (var g0 = k0; g0 < k1; g0 += gs) {
    for (var k = g0; k < min(g0 + gs, k1); k++) {
      var xv: array<f32, KNM_MAX>;  // x[m0 + i, k]: the same address for every thread, scalar loads
      for (var i = 0u; i < KNM; i++) { xv[i] = x[xr[i] + k]; }
      let row = base + k * stride;
      if (wide_words(pw)) {
        // The thread's KNV units as KNV * w_uw() / 4 16-byte loads (q8: 16 columns each, q4: 32)
        // rather than one or two words per unit: CPU adapters pay per load, whatever its width.
        // Word e of load j: q8 the 4 columns of accumulator 4j + e (half a unit), q4 the 8 of unit 4j + e.
        for (var j = 0u; j < KNV * w_uw() / 4u; j++) {
          let q = w4[row * w_uw() / 4u + j];
          for (var e = 0u; e < 4u; e++) {
            if (W_FMT == 2u) {
              let d = q8x4(q[e]);
              for (var i = 0u; i < KNM; i++) { acc[i * apr + 4u * j + e] += d * xv[i]; }
            } else {
              let lo = q4x4(q[e], 0u);
              let hi = q4x4(q[e], 16u);
              for (var i = 0u; i < KNM; i++) {
                acc[i * apr + 8u * j + 2u * e] += lo * xv[i];
                acc[i * apr + 8u * j + 2u * e + 1u] += hi * xv[i];
              }
            }
          }
        }
        continue;
      }
      for (var v = 0u; v < KNV; v++) {
        let q = w_unit(row + wv[v]);
        if (w_wide()) {
          for (var i = 0u; i < KNM; i++) {
            acc[i * apr + 2u * v] += q.lo * xv[i];
            acc[i * apr + 2u * v + 1u] += q.hi * xv[i];
          }
        } else {
          for (var i = 0u; i < KNM; i++) { acc[i * apr + v] += q.lo * xv[i]; }
        }
      }
    }
    if (W_FMT == 3u) {
      for (var v = 0u; v < KNV; v++) {
        let sc = w_qs8(g0, min(v0 + v, vrow - 1u) * 8u);
        for (var i = 0u; i < KNM; i++) {
          let a = i * apr + 2u * v;
          tot[a] += acc[a] * sc.lo;
          tot[a + 1u] += acc[a + 1u] * sc.hi;
          acc[a] = vec4<f32>(0.0);
          acc[a + 1u] = vec4<f32>(0.0);
        }
      }
    }
  }
  if (W_FMT == 3u) { acc = tot; }
  // Columns per unit: 4 (f32) or 8. A plain W has N a multiple of that; a paneled one may not (the
  // transposed LM head, N = 50257): its last unit then covers zero padding, whose columns are not
  // stored.
  let cpw = select(4u, 8u, w_wide());
  for (var i = 0u; i < KNM; i++) {
    if (m0 + i < p.M) {
      for (var v = 0u; v < KNV; v++) {
        if (v0 + v < vrow) {
          for (var c = 0u; c < cpw; c++) {
            let col = (v0 + v) * cpw + c;
            if (col < p.N) { finish(m0 + i, col, s, acc[i * apr + (v * cpw + c) / 4u][c % 4u]); }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// reduce: out[m, c] = epilogue(sum_s partials[s, m, c]) over M x ldo, one element per thread
// (x is bound to the partials; p.K = S, p.N = ldo, p.wpr = workgroups along x).
@compute @workgroup_size(WG)
fn reduce(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let e = (wid.y * p.wpr + wid.x) * WG + t;
  if (e >= p.M * p.N) { return; }
  let m = e / p.N;
  let c = e % p.N;
  let plane = p.M * p.N;
  var v = 0.0;
  for (var s = 0u; s < p.K; s++) { v += x[s * plane + e]; }
  finish(m, c, 0u, v);
}
