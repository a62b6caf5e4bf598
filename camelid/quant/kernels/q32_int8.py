"""32-weight-block products (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) on integer dot products (VNNI, AVX-512BW, AVX2),
and repacked Q4_0 prompts on AMX tiles.

Same results as q32_float.py, bit for bit, with the integer sums done the way llama.cpp does them:
`simd.dot_bytes` (`vpdpbusd` on AVX-512 VNNI; `vpmaddubsw` + `vpmaddwd` on AVX-512BW and AVX2)
multiplies 4 unsigned weight codes by 4 signed int8 activations and adds the products into an int32
lane. One vector holds 16 rows, one lane per row, so the activations are broadcast and nothing is
summed across lanes.

Layout (layout.py, int8 families): groups of 16 rows; 4-bit codes (Q4_0, Q4_1) 8 weights per
64-byte step, the file's size; other codes (Q5_0, Q5_1 as 0..31, Q8_0 as q+128) 4 weights per step;
block scales and mins as float16 bits, (n_groups, n_blocks, 16) uint16.

Codes are unsigned, so each type's offset `off` (8 for Q4_0, 16 for Q5_0, 128 for Q8_0) comes back
as a correction: the int32 accumulators start at -off times the sum of their activations
(`_activation_sums`), and every integer sum equals ggml's. Q8_0's shifted codes reach 255, whose
products overflow vpmaddubsw's int16 pairs, so without VNNI Q8_0 keeps its signed codes (off 0, the
weights as an int8 array) and multiplies with `simd.dot_signed_bytes`, llama.cpp's AVX2 sign trick.

Float order (camelid/quant/kernels/__init__.py): `_mm_repacked` for llama.cpp's repacked Q4_0
gemv/gemm, one accumulator per output, acc = fma(f32(block sum), d_w * d_a, acc); `_mm_vec` for the
others, 8 lanes of 4 products per block, acc_j = fma(d_w * d_a, f32(lane j), acc_j), summed as
((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), plus the Q8_1 min terms.

AMX (`Q32AmxRepacked`, camelid.cpu.amx): the REPACKED order for 16 tokens or more, where one
`tdpbssd` gives a block's integer sums for 16 tokens x 16 rows at once. Per worker, per 16-row group:
- the group's 4-bit codes become signed bytes (code - 8) in a buffer, one B tile per block: 8 rows
  of 64 bytes, row 2k the low nibbles of step 4b+k, row 2k+1 its high nibbles (weights 8k..8k+3 and
  8k+4..8k+7 of the block, each row's 4 bytes together), (n_blocks, 8, 16, 4) int8;
- for each 16 tokens, two blocks at a time: A = the tokens' 32 activation codes of the block (16 rows
  of 32 bytes, n_in apart), C = A times B (16 tokens x 16 rows int32), stored to memory and turned
  into floats token by token (a row of C is one token's 16 outputs, one lane per row, as in
  `_mm_repacked`, whose float steps it repeats); the next pair's products run meanwhile
  (layout.py's tile helpers).
The activations are padded with zero codes to whole tiles of 16 tokens, whose outputs are not
written. Storing a C tile (1 KB) costs about what a product does and bounds the speed: 1.9x
`_mm_repacked` on one core at 512 tokens.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange, types
from numba.extending import overload

from camelid.cpu import amx
from camelid.cpu import simd as v
from camelid.cpu.work_queue import chunk_groups, new_queue, next_chunk, work_split
from camelid.quant.kernels.activations import quantize_q8_0_or_1
from camelid.quant.kernels.layout import (C_TILE, NIBBLE_TYPES, ROWS, TILE_CONFIG, TILE_TOKENS, a_tiles, codes_q32, interleave_rows,
                                          next_tiles, nibble_tiles, pack_nibble_steps, single_tile, start_tiles, step_codes,
                                          steps_interleaved, store_group)
from camelid.quant.types import BLOCK_TYPES

T = GGMLQuantizationType
U = np.uint64
PACK_ROWS = 4096  # rows laid out per step at load time
CODE_OFFSET = {T.Q4_0: 8, T.Q4_1: 0, T.Q5_0: 16, T.Q5_1: 0, T.Q8_0: 128}  # makes every code unsigned


@njit(cache=True, boundscheck=False)
def _activation_sums(aq, n_tok, n_in, off, sums4, sums32):
    """-off times the sums of the int8 activations aq (n_tok * n_in) by 4 (sums4) and by 32 (sums32)."""
    for t in range(n_tok):
        for b in range(n_in // 32):
            block = 0
            for j in range(8):
                o = t * n_in + b * 32 + 4 * j
                s = np.int32(aq[o]) + np.int32(aq[o + 1]) + np.int32(aq[o + 2]) + np.int32(aq[o + 3])
                sums4[t * (n_in // 4) + b * 8 + j] = -off * s
                block += s
            sums32[t * (n_in // 32) + b] = -off * block


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_repacked(w, d, aq, ad, sums32, n_out, n_in, n_tok, out, n_chunks, n_workers):
    """out (n_tok * n_out) in the repacked-Q4_0 order, from 4-bit codes; tokens 4 at a time, then 1 by 1."""
    nb = U(n_in // 32)
    uin = U(n_in)
    uout = U(n_out)
    n_groups = (n_out + ROWS - 1) // ROWS
    group_bytes = U(n_in // 2 * ROWS)
    n4 = U(n_tok - n_tok % 4)
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        tmp = np.empty(ROWS, np.float32)
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                wg = g * group_bytes
                dg = g * nb * U(ROWS)
                row0 = g * U(ROWS)
                n_valid = min(U(ROWS), uout - row0)
                for t in range(U(0), n4, U(4)):
                    acc0 = v.zeros_f32()
                    acc1 = v.zeros_f32()
                    acc2 = v.zeros_f32()
                    acc3 = v.zeros_f32()
                    for b in range(nb):
                        p0 = p1 = p2 = p3 = v.zeros_i32()
                        for s in range(U(4)):
                            lo, hi = step_codes(w, wg + (b * U(4) + s) * U(64), True)
                            a = t * uin + b * U(32) + s * U(8)
                            p0 = v.dot_bytes_i16(v.dot_bytes_i16(p0, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                            a += uin
                            p1 = v.dot_bytes_i16(v.dot_bytes_i16(p1, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                            a += uin
                            p2 = v.dot_bytes_i16(v.dot_bytes_i16(p2, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                            a += uin
                            p3 = v.dot_bytes_i16(v.dot_bytes_i16(p3, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                        s0 = v.add_i16_pairs(v.broadcast_i32(sums32[t * nb + b]), p0)
                        s1 = v.add_i16_pairs(v.broadcast_i32(sums32[(t + U(1)) * nb + b]), p1)
                        s2 = v.add_i16_pairs(v.broadcast_i32(sums32[(t + U(2)) * nb + b]), p2)
                        s3 = v.add_i16_pairs(v.broadcast_i32(sums32[(t + U(3)) * nb + b]), p3)
                        dw = v.load_f16(d, dg + b * U(ROWS))
                        acc0 = v.fma(v.to_f32(s0), v.mul(dw, v.broadcast_f32(ad[t * nb + b])), acc0)
                        acc1 = v.fma(v.to_f32(s1), v.mul(dw, v.broadcast_f32(ad[(t + U(1)) * nb + b])), acc1)
                        acc2 = v.fma(v.to_f32(s2), v.mul(dw, v.broadcast_f32(ad[(t + U(2)) * nb + b])), acc2)
                        acc3 = v.fma(v.to_f32(s3), v.mul(dw, v.broadcast_f32(ad[(t + U(3)) * nb + b])), acc3)
                    store_group(out, t * uout + row0, n_valid, acc0, tmp)
                    store_group(out, (t + U(1)) * uout + row0, n_valid, acc1, tmp)
                    store_group(out, (t + U(2)) * uout + row0, n_valid, acc2, tmp)
                    store_group(out, (t + U(3)) * uout + row0, n_valid, acc3, tmp)
                for t in range(n4, U(n_tok)):
                    acc = v.zeros_f32()
                    for b in range(nb):
                        pairs = v.zeros_i32()
                        for s in range(U(4)):
                            lo, hi = step_codes(w, wg + (b * U(4) + s) * U(64), True)
                            a = t * uin + b * U(32) + s * U(8)
                            pairs = v.dot_bytes_i16(v.dot_bytes_i16(pairs, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                        isum = v.add_i16_pairs(v.broadcast_i32(sums32[t * nb + b]), pairs)
                        dw = v.load_f16(d, dg + b * U(ROWS))
                        acc = v.fma(v.to_f32(isum), v.mul(dw, v.broadcast_f32(ad[t * nb + b])), acc)
                    store_group(out, t * uout + row0, n_valid, acc, tmp)
            c = next_chunk(queue, worker, n_chunks, n_workers)


def _dot_codes(w, acc, codes, activations):
    """acc plus the products of weight codes and activations by 4 per lane, chosen by the type of the
    weights w when the kernel compiles: unsigned (uint8) codes with `dot_bytes`, signed (int8) ones with
    `dot_signed_bytes`."""


@overload(_dot_codes, inline="always")
def _dot_codes_for(w, acc, codes, activations):
    if w.dtype == types.int8:
        return lambda w, acc, codes, activations: v.dot_signed_bytes(acc, codes, activations)
    return lambda w, acc, codes, activations: v.dot_bytes(acc, codes, activations)


@njit(cache=True, inline="always")
def _lane_pair(w, o, nibbles, aq, a, sums4, si, dsc, acc_lo, acc_hi):
    """One 8-weight step of a token: lanes 2s and 2s+1 of the block, added to their accumulators."""
    lo, hi = step_codes(w, o, nibbles)
    lane_lo = _dot_codes(w, v.broadcast_i32(sums4[si]), lo, v.broadcast_bytes4(aq, a))
    lane_hi = _dot_codes(w, v.broadcast_i32(sums4[si + U(1)]), hi, v.broadcast_bytes4(aq, a + U(4)))
    return v.fma(dsc, v.to_f32(lane_lo), acc_lo), v.fma(dsc, v.to_f32(lane_hi), acc_hi)


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_vec(w, nibbles, d, m, has_min, aq, ad, as_, sums4, n_out, n_in, n_tok, out, n_chunks, n_workers):
    """out (n_tok * n_out) in ggml's 8-lane vec_dot order, from 4-bit or byte codes, token by token."""
    nb = U(n_in // 32)
    n4 = U(n_in // 4)
    uin = U(n_in)
    uout = U(n_out)
    n_groups = (n_out + ROWS - 1) // ROWS
    step_bytes = U(64 if nibbles else 128)  # per 8 weights of 16 rows
    group_bytes = U(n_in // 8) * step_bytes
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        tmp = np.empty(ROWS, np.float32)
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                wg = g * group_bytes
                dg = g * nb * U(ROWS)
                row0 = g * U(ROWS)
                n_valid = min(U(ROWS), uout - row0)
                for t in range(U(n_tok)):
                    acc0 = v.zeros_f32()
                    acc1 = v.zeros_f32()
                    acc2 = v.zeros_f32()
                    acc3 = v.zeros_f32()
                    acc4 = v.zeros_f32()
                    acc5 = v.zeros_f32()
                    acc6 = v.zeros_f32()
                    acc7 = v.zeros_f32()
                    mins = v.zeros_f32()
                    for b in range(nb):
                        dsc = v.mul(v.load_f16(d, dg + b * U(ROWS)), v.broadcast_f32(ad[t * nb + b]))
                        o = wg + b * U(4) * step_bytes
                        a = t * uin + b * U(32)
                        si = t * n4 + b * U(8)
                        acc0, acc1 = _lane_pair(w, o, nibbles, aq, a, sums4, si, dsc, acc0, acc1)
                        acc2, acc3 = _lane_pair(w, o + step_bytes, nibbles, aq, a + U(8), sums4, si + U(2), dsc, acc2, acc3)
                        acc4, acc5 = _lane_pair(w, o + U(2) * step_bytes, nibbles, aq, a + U(16), sums4, si + U(4), dsc, acc4, acc5)
                        acc6, acc7 = _lane_pair(w, o + U(3) * step_bytes, nibbles, aq, a + U(24), sums4, si + U(6), dsc, acc6, acc7)
                        if has_min:
                            mins = v.fma(v.load_f16(m, dg + b * U(ROWS)), v.broadcast_f32(as_[t * nb + b]), mins)
                    total = v.add(v.add(v.add(acc0, acc4), v.add(acc2, acc6)), v.add(v.add(acc1, acc5), v.add(acc3, acc7)))
                    if has_min:
                        total = v.add(total, mins)
                    store_group(out, t * uout + row0, n_valid, total, tmp)
            c = next_chunk(queue, worker, n_chunks, n_workers)


@njit(cache=True, inline="always")
def _activations(x, has_min, off):
    """x (n_tok, n_in) as Q8_0 / Q8_1 codes, scales and sums, and -off times the codes' sums by 4 and 32."""
    n_tok, n_in = x.shape
    nb = n_in // 32
    aq = np.empty(n_tok * n_in, np.int8)
    ad = np.empty(n_tok * nb, np.float32)
    s = np.empty(n_tok * nb if has_min else 0, np.float32)
    quantize_q8_0_or_1(x, has_min, aq, ad, s)
    sums4 = np.empty(n_tok * n_in // 4, np.int32)
    sums32 = np.empty(n_tok * nb, np.int32)
    _activation_sums(aq, n_tok, n_in, off, sums4, sums32)
    return aq, ad, s, sums4, sums32


@njit(cache=True, boundscheck=False)
def _matmul_vec(w, nibbles, off, d, m, has_min, x, n_out, out, n_chunks, n_workers):
    """Quantize the activations x (n_tok, n_in) as llama.cpp does, then run `_mm_vec`: one call from Python."""
    n_tok, n_in = x.shape
    aq, ad, s, sums4, _ = _activations(x, has_min, off)
    _mm_vec(w, nibbles, d, m, has_min, aq, ad, s, sums4, n_out, n_in, n_tok, out, n_chunks, n_workers)


@njit(cache=True, boundscheck=False)
def _matmul_repacked(w, off, d, x, n_out, out, n_chunks, n_workers):
    """Quantize the activations x (n_tok, n_in) as llama.cpp does, then run `_mm_repacked`."""
    n_tok, n_in = x.shape
    aq, ad, _, _, sums32 = _activations(x, False, off)
    _mm_repacked(w, d, aq, ad, sums32, n_out, n_in, n_tok, out, n_chunks, n_workers)


class Q32Int8:
    """A 32-weight-block matrix laid out for the int8 kernels (see the module docstring), multiplied
    in the VEC order."""

    batch_rule = "rows"  # a row's arithmetic is the same in any batch (QTensor.batch_rules)

    def __init__(self, raw: np.ndarray, t: GGMLQuantizationType, n_out: int, n_in: int):
        bt = BLOCK_TYPES[t]
        n_blocks = n_in // 32
        self.n_groups = n_groups = (n_out + ROWS - 1) // ROWS
        signed_codes = t == T.Q8_0 and not v.BYTE_PRODUCTS_EXACT
        off = 0 if signed_codes else CODE_OFFSET[t]
        self.nibbles, self.off, self.has_min = t in NIBBLE_TYPES, np.int32(off), t in (T.Q4_1, T.Q5_1)
        group_bytes = n_in // 2 * ROWS if self.nibbles else n_in * ROWS
        self.w = v.aligned_empty(n_groups * group_bytes, np.uint8)
        self.d = v.aligned_empty(n_groups * n_blocks * ROWS, np.uint16)
        self.m = v.aligned_empty(n_groups * n_blocks * ROWS if self.has_min else 0, np.uint16)
        if self.nibbles:
            pack_nibble_steps(np.ascontiguousarray(raw), bt.type_size, bt.dtype.fields["qs"][1], False, self.w)
        for r0 in range(0, n_out, PACK_ROWS):
            r1 = min(n_out, r0 + PACK_ROWS)
            g0, g1 = r0 // ROWS, (r1 + ROWS - 1) // ROWS
            recs = np.ascontiguousarray(raw[r0:r1]).reshape(-1).view(bt.dtype)
            if not self.nibbles:
                codes = codes_q32(recs, t).view(np.uint8) + np.uint8(off)
                self.w[g0 * group_bytes:g1 * group_bytes] = steps_interleaved(codes.reshape(r1 - r0, n_in), g1 - g0)
            self.d[g0 * n_blocks * ROWS:g1 * n_blocks * ROWS] = interleave_rows(recs["d"].view(np.uint16).reshape(r1 - r0, n_blocks), g1 - g0, ROWS)
            if self.has_min:
                self.m[g0 * n_blocks * ROWS:g1 * n_blocks * ROWS] = interleave_rows(recs["m"].view(np.uint16).reshape(r1 - r0, n_blocks), g1 - g0, ROWS)
        if signed_codes:
            self.w = self.w.view(np.int8)
        self.n_out, self.n_in = n_out, n_in
        self.copies_weights = True

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, in llama.cpp's vec_dot order (the
        same arithmetic for every row whatever the batch, so single_rows changes nothing)."""
        out = np.empty((x.shape[0], self.n_out), np.float32)
        _matmul_vec(self.w, self.nibbles, self.off, self.d, self.m, self.has_min, x, self.n_out, out.reshape(-1),
                    *work_split(self.n_groups))
        return out


class Q32Int8Repacked(Q32Int8):
    """A Q4_0 matrix that llama.cpp repacks: Q32Int8's layout, multiplied in the REPACKED order."""

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, in llama.cpp's q4_0_8x8 gemv/gemm order
        (the same arithmetic per row in both, so single_rows changes nothing)."""
        out = np.empty((x.shape[0], self.n_out), np.float32)
        _matmul_repacked(self.w, self.off, self.d, x, self.n_out, out.reshape(-1), *work_split(self.n_groups))
        return out


# ---------------------------------------------------------------------------- AMX tiles

MIN_TOKENS = 16  # fewer tokens go to the VNNI kernel (unpacking the weights costs more than it saves)


@njit(cache=True, inline="always")
def _add_block(sums, at, d, db, ad, t0, nb, b, acc):
    """acc (16 tokens x 16 rows) += f32(block sums) * (d_w * d_a), from C stored at sums[at:]."""
    dw = v.load_f16(d, db)
    for t in range(U(TILE_TOKENS)):
        s = v.to_f32(v.load_i32(sums, at + t * U(ROWS)))
        v.store_f32(acc, t * U(ROWS), v.fma(s, v.mul(dw, v.broadcast_f32(ad[(t0 + t) * nb + b])), v.load_f32(acc, t * U(ROWS))))


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_tiles(w, d, aq, ad, n_out, n_in, n_tok, out, n_chunks, n_workers, config):
    """out (n_tok * n_out) in the repacked-Q4_0 order. aq (n_pad * n_in) int8 Q8_0 codes as A tiles
    (`a_tiles`, k = 32) and ad (n_pad * n_blocks) float32 scales, n_pad = n_tok rounded up to whole
    tiles (zeros past n_tok)."""
    nb = U(n_in // 32)
    n_pairs = nb // U(2)
    uin = U(n_in)
    uout = U(n_out)
    n_groups = (n_out + ROWS - 1) // ROWS
    group_bytes = U(n_in // 2 * ROWS)
    n_pad = U((n_tok + TILE_TOKENS - 1) // TILE_TOKENS * TILE_TOKENS)
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        codes = amx.aligned_empty(n_in * ROWS, np.int8)  # (n_blocks, 8, 16, 4): one B tile per block
        sums = amx.aligned_empty(2 * C_TILE, np.int32)  # a pair's C tiles, (2, 16 tokens, 16 rows)
        acc = amx.aligned_empty(C_TILE, np.float32)  # (16 tokens, 16 rows)
        tmp = np.empty(ROWS, np.float32)
        amx.configure(config)
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                nibble_tiles(w, g * group_bytes, nb, 8, codes)
                dg = g * nb * U(ROWS)
                row0 = g * U(ROWS)
                n_valid = min(U(ROWS), uout - row0)
                for t0 in range(U(0), n_pad, U(TILE_TOKENS)):
                    acc[:] = 0.0
                    a_at = t0 * uin  # its A tiles
                    if n_pairs > U(0):
                        start_tiles(aq, a_at, codes)
                    for p in range(n_pairs):
                        next_tiles(aq, a_at, codes, p, n_pairs, sums)
                        b = U(2) * p
                        _add_block(sums, U(0), d, dg + b * U(ROWS), ad, t0, nb, b, acc)
                        _add_block(sums, U(C_TILE), d, dg + (b + U(1)) * U(ROWS), ad, t0, nb, b + U(1), acc)
                    if nb % U(2):
                        single_tile(aq, a_at, codes, nb - U(1), sums)
                        _add_block(sums, U(0), d, dg + (nb - U(1)) * U(ROWS), ad, t0, nb, nb - U(1), acc)
                    for t in range(U(0), min(U(TILE_TOKENS), U(n_tok) - t0)):
                        store_group(out, (t0 + t) * uout + row0, n_valid, v.load_f32(acc, t * U(ROWS)), tmp)
            c = next_chunk(queue, worker, n_chunks, n_workers)
        amx.release()


@njit(cache=True, boundscheck=False)
def _matmul_tiles(w, d, x, n_out, out, n_chunks, n_workers, config):
    """Quantize the activations x (n_tok, n_in) to Q8_0 as llama.cpp does, padded to whole tiles, then run `_mm_tiles`."""
    n_tok, n_in = x.shape
    nb = n_in // 32
    n_pad = (n_tok + TILE_TOKENS - 1) // TILE_TOKENS * TILE_TOKENS
    aq = amx.aligned_empty(n_pad * n_in, np.int8)
    aq[n_tok * n_in:] = 0
    ad = np.zeros(n_pad * nb, np.float32)
    quantize_q8_0_or_1(x, False, aq[:n_tok * n_in], ad[:n_tok * nb], np.empty(0, np.float32))
    _mm_tiles(w, d, a_tiles(aq, n_pad, n_in, 32), ad, n_out, n_in, n_tok, out, n_chunks, n_workers, config)


class Q32AmxRepacked(Q32Int8Repacked):
    """A repacked Q4_0 matrix (Q32Int8Repacked's layout) whose products of MIN_TOKENS tokens or more
    run on AMX tiles (see the module docstring)."""

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, in llama.cpp's q4_0_8x8 gemv/gemm order."""
        if x.shape[0] < MIN_TOKENS:
            return super().matmul(x, single_rows)
        out = np.empty((x.shape[0], self.n_out), np.float32)
        _matmul_tiles(self.w, self.d, x, self.n_out, out.reshape(-1), *work_split(self.n_groups), TILE_CONFIG)
        return out
