// Linear layers for many rows of x on CPU adapters whose subgroups are 8 invocations (lavapipe):
// out[M, N] = x[M, K] @ W[K, N] (+ bias) (gelu) (+= out), W f32 or f16 in 16-byte words, plain or
// in column panels, exactly as gemv_kn_cols reads it. This file is appended to matmul.wgsl (the
// bindings, Params, W_F16 and the epilogue `finish` are that file's); the engine builds it only
// where the device has the `subgroups` feature with a subgroup size of exactly 8.
//
// Why: on lavapipe every load whose address differs between invocations is a per-invocation
// scalar loop (~6 cycles per 32-bit word), so a matmul's cost there is the number of such words
// each invocation loads per multiply-add. gemv_kn_cols gives each invocation 8 rows x 8 columns
// and loads all 16 x and W words per k itself (4 multiply-adds per word). Here the 8 invocations
// of a subgroup share their loads: each loads 1/8 of the block's x rows (one 16-byte word: 4
// steps of k) and broadcasts it to the others (subgroupBroadcast with a constant lane: one vector
// shuffle, no memory), so per 4 steps of k an invocation loads SGR / 8 x words and 4 W words for
// SGR x 4 (f32) or SGR x 8 (f16) columns x 4 multiply-adds: 10.7 per word at SGR 16, f32.
//
// Work split: workgroup = one subgroup of 8 invocations; wid.x picks 8 adjacent 16-byte W words
// (32 f32 / 64 f16 columns; invocation t owns word wid.x * 8 + t), wid.z a block of SGR rows of
// x (invocation t loads rows m0 + t, m0 + 8 + t, ...). No workgroup memory, no barriers (which
// lavapipe runs as coroutines). Needs K % 4 == 0 (x read as vec4 along k) and no split-K.
// Every invocation runs the whole loop, also those past the last word or row (they load clamped
// addresses and store nothing): a broadcast needs its source lane active.

enable subgroups;

override SGR: u32 = 16u;  // gemm_kn_sg: rows of x per workgroup, 8 or 16 (SGR / 8 x words per invocation)

const SGR_MAX = 16u;

// The 8 lanes' values of `v` (lane i's at index i): constant source lanes, as subgroupBroadcast needs.
fn lanes8(v: vec4<f32>) -> array<vec4<f32>, 8> {
  return array<vec4<f32>, 8>(
    subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
    subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
}

@compute @workgroup_size(8)
fn gemm_kn_sg(@builtin(subgroup_invocation_id) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let vrow = p.wpr / 4u;             // 16-byte words per W row (a paneled W: its padded panels)
  let v = wid.x * 8u + t;            // this invocation's W word
  let vc = min(v, vrow - 1u);        // clamped: lanes past the last word load its copy
  // Word vc of W row k is at base + k * stride (plain row-major, or panels of pw words).
  var base = vc;
  var stride = vrow;
  if (p.pw != 0u) {
    base = (vc / p.pw) * p.K * p.pw + vc % p.pw;
    stride = p.pw;
  }
  let m0 = wid.z * SGR;
  let kw = p.K / 4u;                 // x words per row
  var xo: array<u32, 2>;             // [b] x word offset of the row this invocation loads for block b
  for (var b = 0u; b < SGR / 8u; b++) { xo[b] = min(m0 + b * 8u + t, p.M - 1u) * kw; }
  // f32: acc[i] holds columns 4v .. 4v + 3 of row m0 + i; f16: acc[2i] columns 8v .. 8v + 3, acc[2i + 1] 8v + 4 .. 8v + 7.
  var acc: array<vec4<f32>, 2u * SGR_MAX>;
  for (var i = 0u; i < 2u * SGR; i++) { acc[i] = vec4<f32>(0.0); }  // zeroed by hand (see attention.wgsl on lavapipe)
  for (var k4 = 0u; k4 < kw; k4++) {
    // W rows 4 k4 .. 4 k4 + 3 of this invocation's word.
    let r = base + 4u * k4 * stride;
    // As f32: lo[j] columns 0..3 of the word in row 4 k4 + j, hi[j] columns 4..7 (f16 only).
    var lo: array<vec4<f32>, 4>;
    var hi: array<vec4<f32>, 4>;
    for (var j = 0u; j < 4u; j++) {
      let q = w4[r + j * stride];
      if (W_F16) {
        lo[j] = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        hi[j] = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
      } else {
        lo[j] = bitcast<vec4<f32>>(q);
      }
    }
    for (var b = 0u; b < SGR / 8u; b++) {
      let xs = lanes8(x4[xo[b] + k4]);  // [i] x[m0 + 8b + i, 4 k4 .. 4 k4 + 3]
      for (var i = 0u; i < 8u; i++) {
        let xv = xs[i];
        let a = b * 8u + i;
        if (W_F16) {
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
  let cpw = select(4u, 8u, W_F16);
  for (var i = 0u; i < SGR; i++) {
    if (m0 + i < p.M) {
      for (var c = 0u; c < cpw; c++) {
        let col = v * cpw + c;
        let a = select(i, 2u * i + c / 4u, W_F16);
        if (col < p.N) { finish(m0 + i, col, 0u, acc[a][c % 4u]); }
      }
    }
  }
}
