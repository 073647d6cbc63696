// Elementwise kernels over flat f32 arrays; the engine's one is a row gather:
//   gather_rows:         out[i, :] = x[idx[i], :]  x [T, C], idx [n] u32, out [n, C]
// (test/shaders/elementwise_test.wgsl, appended to this file by the tests, adds gelu and add.)
//
// Work split: one thread per element (per (i, c) for the gather). The flat workgroup index is
// wg.y * groups_x + wg.x so that more than 65535 workgroups fit in two dispatch dimensions.

override WG: u32 = 256u;

struct Params {
  n: u32,         // elements (gather: output rows)
  groups_x: u32,  // workgroups along dispatch x
  C: u32,         // gather: row width
  rows_x: u32,    // gather: rows of x (idx[i] >= rows_x reads nothing and writes NaN)
  nan_bits: u32,  // 0x7fc00000: NaN cannot be written as a WGSL constant
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> idx: array<u32>;

fn flat(wg: vec3<u32>, lid: u32) -> u32 {
  return (wg.y * p.groups_x + wg.x) * WG + lid;
}

// One thread per output element (i, c) of out [n, C]; idx[i] picks the source row of x [rows_x, C].
@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = flat(wg, lid);
  if (e >= p.n * p.C) { return; }
  let i = e / p.C;
  let c = e - i * p.C;
  let src = idx[i];
  // An index outside x must not read out of bounds: the row becomes NaN so the bug shows.
  if (src >= p.rows_x) {
    y[e] = bitcast<f32>(p.nan_bits);
  } else {
    y[e] = x[src * p.C + c];
  }
}
