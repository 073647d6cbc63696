// Test-only entry points of elementwise kernels (appended to shaders/elementwise.wgsl: Params, x,
// y and flat() are that file's; module 'elementwise+elementwise_test'). The engine applies gelu
// and the residual add in the matmul epilogue; these check the same arithmetic on its own.
//   gelu / gelu_inplace: y[i] = gelu_new(x[i])  over [n]   (x may be y: the in-place entry point
//                        binds one read_write buffer because WebGPU forbids binding one range twice)
//   add / add_inplace:   out[i] = a[i] + b[i]   over [n]   (in place: a[i] += b[i])

@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> xy: array<f32>;  // in-place operand

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
