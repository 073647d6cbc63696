// Small elementwise kernels over flat f32 arrays, and a row gather.
//
//   gelu / gelu_inplace: y[i] = gelu_new(x[i])  over [n]   (x may be y: the in-place entry point
//                        binds one read_write buffer because WebGPU forbids binding one range twice)
//   add / add_inplace:   out[i] = a[i] + b[i]   over [n]   (in place: a[i] += b[i])
//   gather_rows:         out[i, :] = x[idx[i], :]  x [T, C], idx [n] u32, out [n, C]
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
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> idx: array<u32>;
@group(0) @binding(5) var<storage, read_write> xy: array<f32>;  // in-place operand

fn flat(wg: vec3<u32>, lid: u32) -> u32 {
  return (wg.y * p.groups_x + wg.x) * WG + lid;
}

// gelu_new (GPT-2's tanh approximation): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// Written as x * sigmoid(2u) = x / (1 + exp(-2u)), the same function without the cancellation of
// 1 + tanh(u) for negative u and without tanh's inf/inf for large |u| (exp overflows to +inf and
// x / inf = 0, the right limit).
fn gelu_new(v: f32) -> f32 {
  let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
  // Clamp so exp never sees an argument beyond +-80 (f32 exp overflows near 88): the ratio is
  // already exactly 0 or x there.
  return v / (1.0 + exp(clamp(-2.0 * u, -80.0, 80.0)));
}

@compute @workgroup_size(WG)
fn gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = flat(wg, lid);
  if (i < p.n) { y[i] = gelu_new(x[i]); }
}

@compute @workgroup_size(WG)
fn gelu_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = flat(wg, lid);
  if (i < p.n) { xy[i] = gelu_new(xy[i]); }
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = flat(wg, lid);
  if (i < p.n) { y[i] = x[i] + b[i]; }
}

@compute @workgroup_size(WG)
fn add_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = flat(wg, lid);
  if (i < p.n) { xy[i] = xy[i] + b[i]; }
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
