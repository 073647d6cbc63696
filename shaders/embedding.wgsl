// Token + position embedding: out[t, :] = wte[ids[t], :] + wpe[pos_t, :], pos_t = meta[t].pos.
//   ids [T] u32, meta [T, 2] u32 (row, pos), out [T, C] f32.
//   wte [V, C] is bound one chunk of rows at a time (gpt2's f32 wte is 154 MB, over the 128 MiB
//   binding limit): this dispatch sees rows [row0, row0 + chunk_rows) and writes only the tokens
//   whose id falls in them, so over all chunk dispatches each output row is written exactly once.
//   A chunk is [chunk_rows, C] row-major, or (p.panel != 0, CPU adapters, where the LM head reads
//   wte as a [C, V] 'kn' weight) its transpose [C, chunk_rows] in column panels of p.panel
//   columns, each panel [C, panel] whole: a token's row is then one column, read with a stride of
//   panel words (a few hundred scattered loads per token: nothing next to the LM head).
//   wte and wpe are each f32 or f16 (WTE_FMT 0 / 1, WPE_F16): f16 is IEEE halves packed in pairs
//   into u32 words along C, rows padded to an even count; both are bound as u32 words either way
//   (f32 words are bitcast), so one shader serves every combination. wte may also be q8 / q4
//   (WTE_FMT 2 / 3: signed integers packed 4 / 8 per word along the stored last dimension, times
//   their scales: q8 one per wte row, q4 one per row and group of 32 of C; see
//   src/kernels/quant.ts), read an element at a time.
//   Defence in depth (the engine validates ids on the CPU first): an id >= V or a pos >= nPos must
//   not read out of bounds; the dispatch of the last chunk writes NaN for such a token's row so the
//   error is visible downstream instead of silently reading another token.
//
// Work split: one thread per pair of columns (2j, 2j + 1) of one token, so an f16 word is read
// once; flat thread index e = t * ceil(C / 2) + j over a 2-D grid of workgroups (wraps past 65535).

override WG: u32 = 64u;
override WTE_FMT: u32 = 0u;  // 0 f32, 1 f16, 2 q8, 3 q4
override WPE_F16: bool = false;

struct Params {
  T: u32,
  C: u32,
  row0: u32,        // first wte row of this chunk
  chunk_rows: u32,  // rows in this chunk
  V: u32,           // rows of the whole wte
  n_pos: u32,       // rows of wpe
  last: u32,        // 1 for the last chunk: it also owns ids >= V
  groups_x: u32,    // workgroups along dispatch x
  nan_bits: u32,    // 0x7fc00000: NaN cannot be written as a WGSL constant
  panel: u32,       // 0: chunk is [chunk_rows, C]; else [C, chunk_rows] in panels of this many columns
  sld: u32,         // q8 / q4: row stride of scl (chunk_rows rounded up to 8)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;        // [T]
@group(0) @binding(2) var<storage, read> tok_meta: array<u32>;     // [T, 2] (row, pos)
@group(0) @binding(3) var<storage, read> wte: array<u32>;        // [chunk_rows, C] (or paneled [C, chunk_rows]) f32 bits or f16 pairs
@group(0) @binding(4) var<storage, read> wpe: array<u32>;        // [n_pos, C] f32 bits or f16 pairs
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // [T, C]
@group(0) @binding(6) var<storage, read> scl: array<f32>;        // q8 [1, sld] / q4 [ceil(C / 32), sld] (any buffer otherwise)

// Element (r, c) of a q8 / q4 chunk, dequantized: the integer's word in the plain or paneled layout,
// sign-extended, times its scale.
fn wte_q(r: u32, c: u32) -> f32 {
  let e = select(4u, 8u, WTE_FMT == 3u);
  var i = r * (((p.C + e - 1u) / e) * e) + c;  // rows padded to whole words
  if (p.panel != 0u) { i = ((r / p.panel) * p.C + c) * p.panel + r % p.panel; }
  let bits = 32u / e;
  let q = f32(extractBits(i32(wte[i / e]), bits * (i % e), bits));
  return q * scl[select(r, (c / 32u) * p.sld + r, WTE_FMT == 3u)];
}

// Columns (2j, 2j + 1) of row r of a [rows, C] tensor stored as f32 words or packed f16 pairs.
// When C is odd the last pair has no second column: f16 reads the zero pad half; f32 clamps the
// read into the row (never past the buffer) and drops the value.
fn wte_pair(r: u32, j: u32) -> vec2<f32> {
  if (WTE_FMT >= 2u) {
    return vec2<f32>(wte_q(r, 2u * j), select(0.0, wte_q(r, min(2u * j + 1u, p.C - 1u)), 2u * j + 1u < p.C));
  }
  if (p.panel != 0u) {
    let second = select(0.0, wte_t(r, min(2u * j + 1u, p.C - 1u)), 2u * j + 1u < p.C);
    return vec2<f32>(wte_t(r, 2u * j), second);
  }
  if (WTE_FMT == 1u) { return unpack2x16float(wte[r * ((p.C + 1u) / 2u) + j]); }
  let i = r * p.C + 2u * j;
  let second = select(0.0, bitcast<f32>(wte[min(i + 1u, r * p.C + p.C - 1u)]), 2u * j + 1u < p.C);
  return vec2<f32>(bitcast<f32>(wte[i]), second);
}

// Element (r, c) of a chunk stored transposed in panels: panel r / panel, its row c, column r % panel
// (f16: halves packed in pairs along the panel row, which has an even width).
fn wte_t(r: u32, c: u32) -> f32 {
  let i = ((r / p.panel) * p.C + c) * p.panel + r % p.panel;
  if (WTE_FMT == 1u) {
    let h = unpack2x16float(wte[i >> 1u]);
    return select(h.x, h.y, (i & 1u) == 1u);
  }
  return bitcast<f32>(wte[i]);
}

fn wpe_pair(r: u32, j: u32) -> vec2<f32> {
  if (WPE_F16) { return unpack2x16float(wpe[r * ((p.C + 1u) / 2u) + j]); }
  let i = r * p.C + 2u * j;
  let second = select(0.0, bitcast<f32>(wpe[min(i + 1u, r * p.C + p.C - 1u)]), 2u * j + 1u < p.C);
  return vec2<f32>(bitcast<f32>(wpe[i]), second);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let pairs = (p.C + 1u) / 2u;
  let e = (wg.y * p.groups_x + wg.x) * WG + lid;
  if (e >= p.T * pairs) { return; }
  let t = e / pairs;
  let j = e - t * pairs;
  let id = ids[t];
  let pos = tok_meta[2u * t + 1u];
  let in_chunk = id >= p.row0 && id - p.row0 < p.chunk_rows;
  let orphan = id >= p.V && p.last == 1u;  // out-of-vocabulary: owned by the last chunk
  if (!in_chunk && !orphan) { return; }
  let c = 2u * j;
  var v: vec2<f32>;
  if (orphan || pos >= p.n_pos) {
    let nan = bitcast<f32>(p.nan_bits);
    v = vec2<f32>(nan, nan);
  } else {
    v = wte_pair(id - p.row0, j) + wpe_pair(pos, j);
  }
  out[t * p.C + c] = v.x;
  if (c + 1u < p.C) { out[t * p.C + c + 1u] = v.y; }
}
