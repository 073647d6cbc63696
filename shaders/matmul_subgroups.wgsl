// Linear layers for many rows of x on CPU adapters whose subgroups are 4 or 8 invocations
// (SwiftShader: 4, lavapipe: 8): out[M, N] = x[M, K] @ W[K, N] (+ bias) (gelu) (+= out), W in
// units (w_unit), plain or in column panels, exactly as gemv_kn_cols reads it (q4: each unit
// times its group's scales as it is loaded, 8 multiplies per 4 k x SGR rows of multiply-adds; the
// scales loaded once per group).
// This file is appended to matmul.wgsl (the bindings, Params, W_FMT and the epilogue `finish` are that
// file's); the engine builds it only where the device profile names it (MatmulProfile.subgroupLanes:
// a device with the `subgroups` feature and a single subgroup size of 4 or 8).
//
// Why: on these adapters every load whose address differs between invocations is a
// per-invocation scalar loop (lavapipe: a bounds branch per 32-bit word), so a matmul's cost
// there is the number of such words each invocation loads per multiply-add. gemv_kn_cols gives
// each invocation 8 rows x 8 columns and loads all their x and W words per k itself. Here the
// SGL invocations of a subgroup share their x loads: each loads 1 / SGL of the block's x rows
// (one 16-byte word: 4 steps of k) and broadcasts it to the others (subgroupBroadcast with a
// constant lane: a vector shuffle, no memory), so per 4 steps of k an invocation loads SGR / SGL
// x words and 4 W words for SGR x 4 (f32) or SGR x 8 (f16) columns x 4 multiply-adds.
//
// Work split: workgroup = one subgroup of SGL invocations; wid.x picks SGL adjacent W units
// (invocation t owns unit wid.x * SGL + t), wid.z a block of SGR rows of x (invocation t
// loads rows m0 + t, m0 + SGL + t, ...). No workgroup memory, no barriers (which lavapipe runs
// as coroutines). Needs K % 4 == 0 (x read as vec4 along k) and no split-K. Every invocation
// runs the whole loop, also those past the last word or row (they load clamped addresses and
// store nothing): a broadcast needs its source lane active.

enable subgroups;

override SGR: u32 = 16u;  // gemm_kn_sg: rows of x per workgroup, a multiple of SGL up to SGR_MAX (SGR / SGL x words per invocation)
override SGL: u32 = 8u;   // gemm_kn_sg: lanes per subgroup = invocations per workgroup, 4 or 8

const SGR_MAX = 16u;

// The SGL lanes' values of `v` (lane i's at index i; SGL 4 leaves 4..7 unset): constant source
// lanes, as subgroupBroadcast needs, and only lanes that exist.
fn lanes(v: vec4<f32>) -> array<vec4<f32>, 8> {
  var r: array<vec4<f32>, 8>;
  r[0] = subgroupBroadcast(v, 0u);
  r[1] = subgroupBroadcast(v, 1u);
  r[2] = subgroupBroadcast(v, 2u);
  r[3] = subgroupBroadcast(v, 3u);
  if (SGL == 8u) {
    r[4] = subgroupBroadcast(v, 4u);
    r[5] = subgroupBroadcast(v, 5u);
    r[6] = subgroupBroadcast(v, 6u);
    r[7] = subgroupBroadcast(v, 7u);
  }
  return r;
}

@compute @workgroup_size(SGL)
fn gemm_kn_sg(@builtin(subgroup_invocation_id) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let vrow = w_upr();                // units per W row (a paneled W: its padded panels)
  let v = wid.x * SGL + t;           // this invocation's W unit
  let vc = min(v, vrow - 1u);        // clamped: lanes past the last unit load its copy
  // Word vc of W row k is at base + k * stride (plain row-major, or panels of pw words).
  var base = vc;
  var stride = vrow;
  if (p.pw != 0u) {
    base = (vc / p.pw) * p.K * p.pw + vc % p.pw;
    stride = p.pw;
  }
  let m0 = wid.z * SGR;
  let kw = p.K / 4u;                 // x words per row
  var xo: array<u32, 4>;             // [b] x word offset of the row this invocation loads for block b
  for (var b = 0u; b < SGR / SGL; b++) { xo[b] = min(m0 + b * SGL + t, p.M - 1u) * kw; }
  // f32: acc[i] holds columns 4v .. 4v + 3 of row m0 + i; 8-column units: acc[2i] columns 8v .. 8v + 3, acc[2i + 1] 8v + 4 .. 8v + 7.
  var acc: array<vec4<f32>, 2u * SGR_MAX>;  // zero-initialised (declared outside the loops)
  var sc = WUnit(vec4<f32>(1.0), vec4<f32>(1.0));  // q4: the scales of the current group of 32 k
  for (var k4 = 0u; k4 < kw; k4++) {
    // W rows 4 k4 .. 4 k4 + 3 of this invocation's unit.
    let r = base + 4u * k4 * stride;
    // As f32: lo[j] columns 0..3 of the unit in row 4 k4 + j, hi[j] columns 4..7 (8-column units).
    var lo: array<vec4<f32>, 4>;
    var hi: array<vec4<f32>, 4>;
    // q4: a group is 8 steps of 4 rows; its scales are loaded at its first.
    if (W_FMT == 3u && k4 % 8u == 0u) { sc = w_qs8(4u * k4, vc * 8u); }
    for (var j = 0u; j < 4u; j++) {
      let q = w_unit(r + j * stride);
      lo[j] = q.lo;
      hi[j] = q.hi;
      if (W_FMT == 3u) {
        lo[j] *= sc.lo;
        hi[j] *= sc.hi;
      }
    }
    for (var b = 0u; b < SGR / SGL; b++) {
      let xs = lanes(x4[xo[b] + k4]);  // [i] x[m0 + b SGL + i, 4 k4 .. 4 k4 + 3]
      for (var i = 0u; i < SGL; i++) {
        let xv = xs[i];
        let a = b * SGL + i;
        if (w_wide()) {
          acc[2u * a] += lo[0] * xv.x + lo[1] * xv.y + lo[2] * xv.z + lo[3] * xv.w;
          acc[2u * a + 1u] += hi[0] * xv.x + hi[1] * xv.y + hi[2] * xv.z + hi[3] * xv.w;
        } else {
          acc[a] += lo[0] * xv.x + lo[1] * xv.y + lo[2] * xv.z + lo[3] * xv.w;
        }
      }
    }
  }
  if (v >= vrow) { return; }
  // Columns per word: 4 (f32) or 8 (f16); a paneled W's last word may cover padding past N.
  let cpw = select(4u, 8u, w_wide());
  for (var i = 0u; i < SGR; i++) {
    if (m0 + i < p.M) {
      for (var c = 0u; c < cpw; c++) {
        let col = v * cpw + c;
        let a = select(i, 2u * i + c / 4u, w_wide());
        if (col < p.N) { finish(m0 + i, col, 0u, acc[a][c % 4u]); }
      }
    }
  }
}
