// KV-cache maintenance.
//
// The caches are arrays of u32 words here, whatever they hold: f32 elements (a word each, their
// bits) or, with the override KV_F16, IEEE halves two per word (element 2i in the low 16 bits,
// 2i + 1 in the high ones, as unpack2x16float reads them). The engine requires C even for f16, so a
// slot's C elements are C / 2 whole words.
//
// kv_write: for each token t (row r, pos p from meta), copy its key and value from the c_attn
//   output qkv [T, 3C] (k = cols [C, 2C), v = cols [2C, 3C)) to k_cache / v_cache [rows, cap, C] at
//   slot p % cap of row r. A token whose row is >= rows is skipped (defence in depth: no write out
//   of bounds). Two tokens of one step must not map to the same (row, slot): the engine never
//   writes more than cap positions of a row in one step.
//   Work split: one thread per (t, word of the slot): EPW = 1 (f32) or 2 (f16) elements c, c + 1;
//   flat index e = t * (C / EPW) + c / EPW over a 2-D grid of workgroups. A thread writes whole
//   words, so no two threads share one.
//
// kv_gather: dst[r, s, :] = src[parent[r], s, :] for s < len (beam reordering, or one prefilled
//   row copied to N rows with parent = 0...). src [src_rows, cap, W] and dst [rows, cap, W] are
//   distinct buffers of W words per slot (C for f32, C / 2 for f16: the copy moves words, so it
//   needs no KV_F16); parent [rows] u32 is written by another GPU kernel. A row's first len slots
//   are contiguous (len * W words), so the copy is flat: e = r * span + i, i < span = max_len * W;
//   threads with i >= len * W do nothing (len lives in the uniform and may shrink between steps).
//   A parent >= src_rows writes NaN (nan_bits: an f32 NaN, or two f16 NaNs) instead of reading out
//   of bounds.

override WG: u32 = 256u;
override KV_F16: bool = false;  // kv_write: the caches hold f16 pairs (else f32)

struct WriteParams {
  T: u32,
  C: u32,
  rows: u32,
  cap: u32,
  groups_x: u32,  // workgroups along dispatch x
}

struct GatherParams {
  rows: u32,      // dst rows
  src_rows: u32,
  cap: u32,
  W: u32,         // words per slot
  len: u32,       // slots to copy (updatable)
  span: u32,      // max_len * W: words per row the dispatch covers
  groups_x: u32,
  nan_bits: u32,  // 0x7fc00000 (f32) or 0x7e007e00 (f16 pair)
}

@group(0) @binding(0) var<uniform> wp: WriteParams;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;             // [T, 3C]
@group(0) @binding(2) var<storage, read> tok_meta: array<u32>;        // [T, 2] (row, pos)
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;   // [rows, cap, C] f32 or f16 (C / 2 words per slot)
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;   // [rows, cap, C]

@compute @workgroup_size(WG)
fn kv_write(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = (wg.y * wp.groups_x + wg.x) * WG + lid;
  let W = select(wp.C, wp.C / 2u, KV_F16);  // words per slot
  if (e >= wp.T * W) { return; }
  let t = e / W;
  let w = e - t * W;
  let row = tok_meta[2u * t];
  let pos = tok_meta[2u * t + 1u];
  if (row >= wp.rows) { return; }
  let dst = (row * wp.cap + pos % wp.cap) * W + w;
  if (KV_F16) {
    let src = t * 3u * wp.C + wp.C + 2u * w;
    k_cache[dst] = pack2x16float(vec2<f32>(qkv[src], qkv[src + 1u]));
    v_cache[dst] = pack2x16float(vec2<f32>(qkv[src + wp.C], qkv[src + wp.C + 1u]));
  } else {
    let src = t * 3u * wp.C + wp.C + w;
    k_cache[dst] = bitcast<u32>(qkv[src]);
    v_cache[dst] = bitcast<u32>(qkv[src + wp.C]);
  }
}

@group(0) @binding(0) var<uniform> gp: GatherParams;
@group(0) @binding(1) var<storage, read> src: array<u32>;         // [src_rows, cap, W]
@group(0) @binding(2) var<storage, read> parent: array<u32>;      // [rows]
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;   // [rows, cap, W]

@compute @workgroup_size(WG)
fn kv_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = (wg.y * gp.groups_x + wg.x) * WG + lid;
  if (e >= gp.rows * gp.span) { return; }
  let r = e / gp.span;
  let i = e - r * gp.span;
  if (i >= gp.len * gp.W) { return; }
  let src_row = parent[r];
  let row_words = gp.cap * gp.W;
  if (src_row >= gp.src_rows) {
    dst[r * row_words + i] = gp.nan_bits;
  } else {
    dst[r * row_words + i] = src[src_row * row_words + i];
  }
}
