# A Python model of gemv_quant_kernel (src/backend/cuda/gemv_quant.cu), run without a GPU: the same
# unit / chunk / group / k_split / n-tile indexing, the int4 magic-number and int8 byte-permute
# dequantization with fp16 rounding, and mma.sync m16n8k16 assembled from the 32 lanes' registers as the
# PTX ISA lays out the A, B and C fragments; compared with a float64 reference built like quant.cc
# (quantize_rtn / dequantize_row). Prints the relative L2 error per case (fp16 rounding: ~1e-4).
# usage: python3 tests/backend/cuda/gemv_quant_model.py   (numpy; a few minutes)
import struct

import numpy as np

rng = np.random.default_rng(1)

def byte_perm(x, y, s):
    b = [(x >> (8*i)) & 255 for i in range(4)] + [(y >> (8*i)) & 255 for i in range(4)]
    return sum(b[(s >> (4*i)) & 7] << (8*i) for i in range(4))
def f16(v): return float(np.float16(v))
def h2(v):
    lo = np.frombuffer(struct.pack('<H', v & 0xffff), np.float16)[0]; hi = np.frombuffer(struct.pack('<H', v >> 16), np.float16)[0]
    return [float(lo), float(hi)]
def pack_h2(a, b):
    return struct.unpack('<H', np.float16(a).tobytes())[0] | (struct.unpack('<H', np.float16(b).tobytes())[0] << 16)

def quantize(W, bits, gs, has_min):
    N, K = W.shape; Kp = (K + 31)//32*32; G = (K + gs - 1)//gs
    rb = Kp//2 if bits == 4 else Kp
    codes = np.zeros((N, rb), np.uint8); S = np.zeros((N, G)); Mn = np.zeros((N, G))
    for n in range(N):
        for g in range(G):
            k0, k1 = g*gs, min(K, g*gs+gs); seg = W[n, k0:k1]
            if bits == 8 and not has_min:
                s = f16(np.abs(seg).max()/127); q = np.clip(np.rint(seg/s) if s > 0 else 0*seg, -127, 127); m = 0
            else:
                lv = (1 << bits) - 1; m = f16(seg.min()); s = f16(max(seg.max()-m, 0)/lv)
                q = np.clip(np.rint((seg-m)/s) if s > 0 else 0*seg, 0, lv)
                if bits == 8: q = q - 128; m = f16(m + 128*s)
            S[n, g] = s; Mn[n, g] = m
            for i, k in enumerate(range(k0, k1)):
                qq = int(q[i])
                if bits == 8: codes[n, k] = qq & 255
                else:
                    blk, e = k//32, k % 32; byte = blk*16 + (e & 15)
                    codes[n, byte] = (codes[n, byte] & 0xf0) | qq if e < 16 else (codes[n, byte] & 0x0f) | (qq << 4)
    return codes, S, Mn

def deq(codes, S, Mn, bits, gs, N, K):
    W = np.zeros((N, K))
    for n in range(N):
        for k in range(K):
            if bits == 8: q = codes[n, k].astype(np.int8)
            else:
                b = codes[n, (k//32)*16 + (k % 32 & 15)]; q = b & 15 if k % 32 < 16 else b >> 4
            W[n, k] = S[n, k//gs]*q + Mn[n, k//gs]
    return W

def kernel(x, codes, S, Mn, bits, gs, N, K, M, k_split, NT, factored=False):
    magic = 1024.0 if bits == 4 else 1152.0
    U = 4 if NT == 1 else (2 if NT == 2 else 1); E = 32 if bits == 4 else 16
    rb = codes.shape[1]; units = rb//16; chunks = (units + 3)//4; G = S.shape[1]
    upg = 1 if G == 1 else gs//E
    def group_of(u): return 0 if G == 1 else min(u//upg, G-1)
    y = np.full((M, N), np.nan)
    tiles = (N + 15)//16
    # row-major word views
    for tile in range(tiles):
        accs = []
        for slice_ in range(k_split):
            acc = np.zeros((NT, 16, 8))  # D of each n-tile, assembled from fragments
            for c0 in range(slice_, chunks, U*k_split):
                for u in range(U):
                    c = c0 + u*k_split
                    if c >= chunks: break
                    # per lane registers
                    A = {}; B = {}; SC = {}
                    for lane in range(32):
                        g, t = lane//4, lane % 4
                        ra, rb_ = min(tile*16+g, N-1), min(tile*16+g+8, N-1)
                        unit = c*4 + t; k0 = unit*E
                        def lw(r):
                            gi = group_of(c*4 if factored else unit)  # factored: the chunk's group, every lane
                            if unit < units:
                                by = codes[r, unit*16:unit*16+16]
                                return [int.from_bytes(by[4*j:4*j+4].tobytes(), 'little') for j in range(4)], S[r, gi], Mn[r, gi]
                            return [0]*4, (S[r, gi] if factored else 0.0), (Mn[r, gi] if factored else 0.0)
                        wa, sa, ma = lw(ra); wb, sb, mb = lw(rb_)
                        SC[lane] = (sa, ma, sb, mb)
                        def xval(m, k): return x[m, k] if k < K else 0.0
                        pa, pb, xp = [], [], [[] for _ in range(NT)]
                        for j in range(4):
                            if bits == 4:
                                for (ww, s, m, out) in ((wa[j], sa, ma, pa), (wb[j], sb, mb, pb)):
                                    for sh in (0, 4, 8, 12):
                                        v = ((ww >> sh) & 0x000f000f) | 0x64006400
                                        lo, hi = h2(v)
                                        if factored: out.append((lo, hi))  # magic + q, exact
                                        else: out.append((f16((lo-1024)*f16(s) + f16(m)), f16((hi-1024)*f16(s) + f16(m))))
                                for nt in range(NT):
                                    mrow = min(nt*8+g, M-1)
                                    xa = pack_h2(xval(mrow, k0+4*j), xval(mrow, k0+4*j+1)); xb = pack_h2(xval(mrow, k0+4*j+2), xval(mrow, k0+4*j+3))
                                    xc = pack_h2(xval(mrow, k0+16+4*j), xval(mrow, k0+17+4*j)); xd = pack_h2(xval(mrow, k0+18+4*j), xval(mrow, k0+19+4*j))
                                    for v in (byte_perm(xa, xb, 0x5410), byte_perm(xc, xd, 0x5410), byte_perm(xa, xb, 0x7632), byte_perm(xc, xd, 0x7632)):
                                        xp[nt].append(tuple(h2(v)))
                            else:
                                for (ww, s, m, out) in ((wa[j], sa, ma, pa), (wb[j], sb, mb, pb)):
                                    uu = ww ^ 0x80808080; f = []
                                    if factored:  # codes_int8 (fp16): bytes into 0x64uu, 1152 + q
                                        out.append(tuple(h2(byte_perm(uu, 0x64646464, 0x4140))))
                                        out.append(tuple(h2(byte_perm(uu, 0x64646464, 0x4342))))
                                        continue
                                    for i in range(4):
                                        q = struct.unpack('<f', struct.pack('<I', byte_perm(uu, 0x4B000000, 0x7540 + i)))[0] - 8388736.0
                                        f.append(f16(q*s + m))
                                    out.append((f[0], f[1])); out.append((f[2], f[3]))
                                for nt in range(NT):
                                    mrow = min(nt*8+g, M-1)
                                    for e in range(8): xp[nt].append((f16(xval(mrow, k0+2*e)), f16(xval(mrow, k0+2*e+1))))
                        A[lane] = (pa, pb); B[lane] = xp
                    # mma sequence: int4: per word j two mma (pairs 4j+0/1, 4j+2/3); int8: one (2j, 2j+1)
                    n_mma = 8 if bits == 4 else 4
                    if factored:  # every lane t of a row reads the same group: the scale can wait
                        for lane in range(32):
                            assert SC[lane] == SC[lane - lane % 4], "a chunk spans two groups"
                    for nt in range(NT):
                        tmp = np.zeros((16, 8)); sx = np.zeros((16, 8))
                        for i in range(n_mma):
                            Am = np.zeros((16, 16)); Bm = np.zeros((16, 8))
                            for lane in range(32):
                                g, t = lane//4, lane % 4
                                pa, pb = A[lane]; xp = B[lane][nt]
                                r0, r1 = pa[2*i], pa[2*i+1]; s0, s1 = pb[2*i], pb[2*i+1]
                                # a0: row g k 2t,2t+1; a1: row g+8; a2: row g k 2t+8..; a3: row g+8 k 2t+8..
                                Am[g, 2*t:2*t+2] = r0; Am[g+8, 2*t:2*t+2] = s0; Am[g, 2*t+8:2*t+10] = r1; Am[g+8, 2*t+8:2*t+10] = s1
                                Bm[2*t:2*t+2, g] = xp[2*i]; Bm[2*t+8:2*t+10, g] = xp[2*i+1]
                            if factored:
                                tmp += Am @ Bm; sx += np.ones((16, 16)) @ Bm  # the all-ones A fragment
                            else:
                                acc[nt] += Am @ Bm
                        if factored:  # lane (g, t): rows g (i < 2) and g + 8 with that lane's scale and min
                            for lane in range(32):
                                g, t = lane//4, lane % 4
                                sa, ma, sb, mb = SC[lane]
                                for i in range(4):
                                    r = g + (8 if i >= 2 else 0); col = 2*t + (i & 1)
                                    s_, m_ = (sa, ma) if i < 2 else (sb, mb)
                                    acc[nt][r, col] += s_*tmp[r, col] + (m_ - magic*s_)*sx[r, col]
            accs.append(acc)
        tot = sum(accs)
        for nt in range(NT):
            for lane in range(32):
                g, t = lane//4, lane % 4
                for i in range(4):
                    row = tile*16 + g + (8 if i >= 2 else 0); m = nt*8 + 2*t + (i & 1)
                    if row < N and m < M:
                        r = g + (8 if i >= 2 else 0); col = 2*t + (i & 1)
                        y[m, row] = tot[nt][r, col]
    return y

cases = [(4, 64, 4, 7, 172, 3, 1, 1), (4, 32, 4, 13, 100, 1, 1, 1), (8, 16, 0, 9, 100, 2, 2, 1), (8, 48, 1, 5, 200, 9, 4, 2),
         (8, 172, 0, 7, 172, 1, 1, 1), (4, 96, 4, 20, 300, 17, 2, 4), (8, 32, 4, 3, 64, 32, 8, 4), (4, 128, 4, 17, 1000, 4, 8, 1),
         (8, 64, 1, 9, 300, 3, 2, 1), (4, 256, 4, 5, 600, 8, 1, 2), (8, 1000, 0, 6, 1000, 8, 4, 1), (4, 128, 4, 6, 200, 11, 1, 2)]
for bits, gs, hm, N, K, M, ks, NT in cases:
    W = rng.uniform(-0.05, 0.05, (N, K)); W[1 % N] = -0.5 + 8*W[1 % N]
    codes, S, Mn = quantize(W, bits, gs, bool(hm) or bits == 4)
    Wd = deq(codes, S, Mn, bits, gs, N, K)
    x = np.vectorize(f16)(rng.uniform(-1, 1, (M, K)))
    ref = x @ Wd.T
    G = S.shape[1]; E = 32 if bits == 4 else 16
    for factored in ((False, True) if G == 1 or (gs // E) % 4 == 0 else (False,)):
        y = kernel(x, codes, S, Mn, bits, gs, N, K, M, ks, NT, factored)
        rel = np.linalg.norm(y - ref)/np.linalg.norm(ref)
        print(f"int{bits} group {gs} N={N} K={K} M={M} k_split={ks} n-tiles={NT} factored={factored}: relative L2 {rel:.2e}")
        assert rel < 1e-3 and not np.isnan(y).any(), "the kernel's indexing disagrees with the reference"
