// Layer normalisation over the last dimension:
//   y[r, c] = (x[r, c] - mean_r) / sqrt(var_r + eps) * gamma[c] + beta[c]
// x, y: [rows, C] f32; gamma, beta: [C] f32. var is the biased variance (as torch.nn.LayerNorm).
//
// Work split: one workgroup per row (rows along dispatch x, wrapped into y past 65535); its WG
// threads stride over C. Mean and variance are two separate tree reductions in workgroup memory
// (two-pass variance avoids the cancellation of E[x^2] - E[x]^2 when |mean| >> std).

override WG: u32 = 256u;

struct Params {
  rows: u32,
  C: u32,
  eps: f32,
  rows_per_y: u32,   // workgroups per dispatch row (y index * rows_per_y + x index = row)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // [rows, C]
@group(0) @binding(2) var<storage, read> gamma: array<f32>;   // [C]
@group(0) @binding(3) var<storage, read> beta: array<f32>;    // [C]
@group(0) @binding(4) var<storage, read_write> y: array<f32>; // [rows, C]

var<workgroup> red: array<f32, WG>;

// Sum of `v` over the workgroup; every thread gets the total.
fn wg_sum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();  // everyone has read red[0] before it is reused
  return total;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * p.rows_per_y + wg.x;
  // Uniform control flow: the whole workgroup leaves together.
  if (row >= p.rows) { return; }
  let base = row * p.C;
  let fc = f32(p.C);

  var s = 0.0;
  for (var c = lid; c < p.C; c += WG) { s += x[base + c]; }
  let mean = wg_sum(s, lid) / fc;

  var q = 0.0;
  for (var c = lid; c < p.C; c += WG) { let d = x[base + c] - mean; q += d * d; }
  let inv = inverseSqrt(wg_sum(q, lid) / fc + p.eps);

  for (var c = lid; c < p.C; c += WG) {
    y[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
  }
}
