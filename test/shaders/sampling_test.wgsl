// Test-only entry point of the sampler (appended to shaders/sampling.wgsl: philox(), the globals
// and the aux binding are that file's; module 'sampling+sampling_test').

// Known-answer test of philox(): aux holds cases of 10 words, [counter x4, key x2, out x4].
@compute @workgroup_size(64)
fn philox_kat(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i >= g.ndraws) { return; }
  let b = i * 10u;
  let r = philox(vec4<u32>(aux[b], aux[b + 1u], aux[b + 2u], aux[b + 3u]), vec2<u32>(aux[b + 4u], aux[b + 5u]));
  aux[b + 6u] = r.x;
  aux[b + 7u] = r.y;
  aux[b + 8u] = r.z;
  aux[b + 9u] = r.w;
}
