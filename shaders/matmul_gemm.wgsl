// The tiled GEMM of the linear layers (appended to matmul.wgsl: bindings, Params and `finish` are
// that file's): prefill on GPUs, M past the profile's GEMV range. A (TY*TM) x (TX*TN) tile of out
// per workgroup, staged through workgroup memory BK deep along K; each thread keeps a TM x TN
// register block. W may be 'kn' or 'nk' (NK).

override TX: u32 = 16u;   // threads along N
override TY: u32 = 16u;   // threads along M
override BK: u32 = 16u;   // K depth of a staged tile (even, so f16 word pairs stay in one tile)
override NK: bool = false; // W layout is [N, K]
override TM: u32 = 4u;   // rows per thread, 1 ..= TMAX
override TN: u32 = 4u;   // columns per thread, 1 ..= TMAX
const TMAX = 8u;  // the register block's largest side (function arrays need a constant size)

var<workgroup> xs: array<f32, BK * TY * TM>;     // x tile, [BK][BM] (transposed)
var<workgroup> ws: array<f32, BK * TX * TN>;     // W tile, [BK][BN]

// gemm: workgroup (wid.x, wid.y) computes out rows [m0, m0 + BM), columns [n0, n0 + BN) with
// BM = TY*TM, BN = TX*TN. Thread (tx, ty) owns rows m0 + ty + i*TY and columns n0 + tx + j*TX
// (strided, so neighbouring threads read neighbouring words of the tiles: no bank conflicts, and
// the final stores are coalesced along N). Loads outside [M, N, K] are zero-filled, so K, M, N need
// not be multiples of the tile.
@compute @workgroup_size(TX, TY)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) t: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
  let BM = TY * TM;
  let BN = TX * TN;
  let NT = TX * TY;
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  var acc: array<array<f32, TMAX>, TMAX>;  // [i < TM][j < TN] used
  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    // x tile [BM, BK] -> xs[kk][r]; consecutive threads read consecutive k of one row.
    for (var e = t; e < BM * BK; e += NT) {
      let r = e / BK;
      let kk = e % BK;
      let gm = m0 + r;
      let gk = k0 + kk;
      xs[kk * BM + r] = select(0.0, x[gm * p.K + gk], gm < p.M && gk < p.K);
    }
    // W tile -> ws[kk][c]. W is stored [K, N] ('kn') or [N, K] (NK): (sr, sc) below is an
    // element's stored row and column, the column along the contiguous dimension. f16 words hold
    // two adjacent elements of it, so each thread unpacks a whole word (tile origins are even along
    // it; its second element lands one column of ws on for 'kn', one row for 'nk'); q8 / q4 are read
    // an element at a time (w_elem, times the q4 scale).
    let rows = select(p.K, p.N, NK);
    let cols = select(p.N, p.K, NK);
    if (W_FMT == 1u) {
      for (var e = t; e < BK * BN / 2u; e += NT) {
        // Word e: consecutive threads walk the contiguous dimension (N for 'kn', K for 'nk').
        let kk = select(e / (BN / 2u), 2u * (e % (BK / 2u)), NK);
        let c = select(2u * (e % (BN / 2u)), e / (BK / 2u), NK);
        let sr = select(k0 + kk, n0 + c, NK);
        let sc = select(n0 + c, k0 + kk, NK);
        var pair = vec2<f32>(0.0);
        if (sr < rows && sc < cols) { pair = unpack2x16float(w[sr * p.wpr + sc / 2u]); }
        ws[kk * BN + c] = pair.x;
        ws[kk * BN + c + select(1u, BN, NK)] = select(0.0, pair.y, sc + 1u < cols);
      }
    } else {
      for (var e = t; e < BK * BN; e += NT) {
        let kk = select(e / BN, e % BK, NK);
        let c = select(e % BN, e / BK, NK);
        let sr = select(k0 + kk, n0 + c, NK);
        let sc = select(n0 + c, k0 + kk, NK);
        ws[kk * BN + c] = w_elem(sr, sc, cols, rows) * w_qs(k0 + kk, n0 + c);
      }
    }
    workgroupBarrier();
    // A run-time bound: the last tile stops at K, and the loop is not unrolled (lavapipe compiles
    // unrolled tiles very slowly; GPUs lose little here, as the loop body is 8 loads + 16 FMAs).
    let kend = min(BK, p.K - k0);
    for (var kk = 0u; kk < kend; kk++) {
      var a: array<f32, TMAX>;
      var b: array<f32, TMAX>;
      for (var i = 0u; i < TM; i++) { a[i] = xs[kk * BM + lid.y + i * TY]; }
      for (var j = 0u; j < TN; j++) { b[j] = ws[kk * BN + lid.x + j * TX]; }
      for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
      }
    }
    workgroupBarrier();  // the tiles are overwritten next round
  }
  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid.y + i * TY;
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid.x + j * TX;
      if (m < p.M && n < p.N) { finish(m, n, 0u, acc[i][j]); }
    }
  }
}
