// Multi-head attention on tensor cores (f16 and bf16 storage): `mma.sync.m16n8k16` with f32
// accumulators, in the FlashAttention-2 arrangement; padded or packed (`sequence_span`, as the CUDA-core
// kernel). Grid (ceil(seq / MMA_QUERIES), heads, batch),
// MMA_WARPS warps per block, each warp owning 16 queries. Q, K and V tiles move global -> shared with
// 16-byte `cp.async` (rows past the sequence zero-filled), two stages deep (the next key tile loads
// while this one is computed), shared -> registers with `ldmatrix`. Per key
// tile: S = Q·Kᵀ (f32), the masked online softmax on S's accumulator fragments (running max and sum
// per row, as the CUDA-core kernel: masked keys get 0, a fully masked row stays 0, NaN propagates),
// then O += P·V with P packed to the input dtype straight from S's fragments (the accumulator layout of
// two n8 tiles is the A layout of one k16 step). For bf16, P is split into hi + lo bf16 parts (two
// products) so that the weights keep f16-like precision. Every sum runs in a fixed order and nothing
// is atomic: the same inputs give the same bits.
#define MMA_WARPS 4
#define MMA_QUERIES (16 * MMA_WARPS)

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
// 16 bytes global -> shared, or 16 zero bytes when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N committed groups of this thread are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
}
// Four 8x8 matrices of 16-bit values; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)) : "memory");
}
// max(a, b), NaN if either is NaN (one instruction; the C form in common.cuh takes three).
__device__ __forceinline__ float max_nan_ptx(float a, float b) {
    float d;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
    return d;
}
// d += a·b for one m16n8k16 tile.
__device__ __forceinline__ void mma16816(h16*, float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma16816(b16*, float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D features per head (a multiple of 32); `scale_log2` = scale * log2(e) (the softmax runs in base 2).
// Thread `lane` of a warp holds, of every 16 x 8 accumulator tile, rows g = lane / 4 and g + 8,
// columns 2 * (lane % 4) and + 1.
template <typename T, int D, bool SPLIT_P>
__device__ void attention_mma(const T* qkv, const float* mask, const unsigned* offsets, T* out, unsigned seq,
                              unsigned heads, float scale_log2) {
    const int KEYS = D > 64 ? 32 : 64;  // keys per tile: two stages of K + V stay under 48 KB
    const int STRIDE = D + 8;           // 16-bit elements per shared row: +16 bytes, so the 8 rows of one
                                        // ldmatrix fall in 8 different bank groups
    const int CHUNKS = D / 8;           // 16-byte pieces per row
    const int TILE = KEYS * STRIDE;
    // Two stages of [K tile | V tile]: tile t lives in stage t % 2 while tile t + 1 loads into the other.
    // Q passes through stage 1 first (it fits: MMA_QUERIES * STRIDE <= 2 * TILE) on its way to registers.
    static_assert(MMA_QUERIES * STRIDE <= 2 * TILE, "Q must fit in one stage");
    __shared__ __align__(16) unsigned short kv[2][2 * TILE];
    __shared__ float keep[2][KEYS];
    const u64 hidden = (u64)heads * D, row = 3 * hidden;
    const Span span = sequence_span(offsets, blockIdx.z, seq);
    const unsigned n = span.len, q_block = blockIdx.x * MMA_QUERIES;
    if (q_block >= n) return;  // past a shorter packed sequence: block-uniform, before any barrier
    const unsigned warp = threadIdx.x / WARP, lane = threadIdx.x & (WARP - 1), g = lane >> 2, c2 = 2 * (lane & 3);
    const T* base = qkv + span.first * row + blockIdx.y * (u64)D;
    // Issues the loads of key tile `k0` into `stage` (rows past the sequence zero-filled, masked).
    auto load_tile = [&](unsigned k0, int stage) {
        for (unsigned i = threadIdx.x; i < KEYS * CHUNKS; i += blockDim.x) {
            const unsigned r = i / CHUNKS, c = i % CHUNKS, key = k0 + r;
            const T* src = base + (u64)(key < n ? key : 0) * row + c * 8;
            cp_async16(kv[stage] + r * STRIDE + c * 8, src + hidden, key < n);
            cp_async16(kv[stage] + TILE + r * STRIDE + c * 8, src + 2 * hidden, key < n);
        }
        if (threadIdx.x < KEYS) {
            const unsigned key = k0 + threadIdx.x;
            keep[stage][threadIdx.x] = key < n && mask[span.first + key] != 0.0f ? 1.0f : 0.0f;
        }
        cp_async_commit();
    };
    for (unsigned i = threadIdx.x; i < MMA_QUERIES * CHUNKS; i += blockDim.x) {
        const unsigned r = i / CHUNKS, c = i % CHUNKS, q = q_block + r;
        cp_async16(kv[1] + r * STRIDE + c * 8, base + (u64)(q < n ? q : 0) * row + c * 8, q < n);
    }
    load_tile(0, 0);
    cp_async_wait<0>();
    __syncthreads();
    // This warp's 16 queries as A fragments, kept for every tile.
    unsigned qf[D / 16][4];
    #pragma unroll
    for (int t = 0; t < D / 16; ++t)
        ldmatrix_x4(qf[t], kv[1] + (warp * 16 + (lane & 15)) * STRIDE + t * 16 + (lane >> 4) * 8);
    __syncthreads();  // Q is out of stage 1 before tile 1 loads into it
    const float neg_inf = __int_as_float(0xff800000);
    float o[D / 8][4], top[2] = {neg_inf, neg_inf}, total[2] = {0.0f, 0.0f};
    #pragma unroll
    for (int t = 0; t < D / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    for (unsigned k0 = 0, tile = 0; k0 < n; k0 += KEYS, ++tile) {
        const int stage = tile & 1;
        if (k0 + KEYS < n) {  // prefetch the next tile, then wait for this one only
            load_tile(k0 + KEYS, stage ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const unsigned short* ks = kv[stage];
        const unsigned short* vs = kv[stage] + TILE;
        const float* kept_keys = keep[stage];
        // S = Q·Kᵀ: tile j holds keys k0 + 8j .. + 7. An x4 load of 8 keys x 32 features gives the B
        // fragments of two k16 steps.
        float s[KEYS / 8][4];
        #pragma unroll
        for (int j = 0; j < KEYS / 8; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            #pragma unroll
            for (int t = 0; t < D / 16; t += 2) {
                unsigned kb[4];
                ldmatrix_x4(kb, ks + (j * 8 + (lane & 7)) * STRIDE + t * 16 + (lane >> 3) * 8);
                mma16816((T*)0, s[j], qf[t], kb[0], kb[1]);
                mma16816((T*)0, s[j], qf[t + 1], kb[2], kb[3]);
            }
        }
        // Online softmax, rows g (i = 0) and g + 8 (i = 1): the row's max over this tile from the quad of
        // lanes that share it, the old sum and context rescaled to it. Maxima are of the raw scores
        // (max(c·s) = c·max(s) for c > 0), so each probability is one fma and one exp2.
        bool kept[KEYS / 8][2];
        #pragma unroll
        for (int j = 0; j < KEYS / 8; ++j) {
            kept[j][0] = kept_keys[j * 8 + c2] != 0.0f;
            kept[j][1] = kept_keys[j * 8 + c2 + 1] != 0.0f;
        }
        float rescale[2];
        #pragma unroll
        for (int i = 0; i < 2; ++i) {
            float m = top[i];
            #pragma unroll
            for (int j = 0; j < KEYS / 8; ++j) {
                #pragma unroll
                for (int e = 0; e < 2; ++e)
                    if (kept[j][e]) m = max_nan_ptx(m, s[j][2 * i + e]);
            }
            m = max_nan_ptx(m, __shfl_xor_sync(0xffffffffu, m, 1));
            m = max_nan_ptx(m, __shfl_xor_sync(0xffffffffu, m, 2));
            // -infinity while every key so far is masked: nothing to rescale. NaN stays NaN; a kept +inf
            // (or, with every kept score -inf, a kept -inf) makes p NaN, as in the CUDA-core kernel.
            rescale[i] = m == neg_inf ? 1.0f : exp2f((top[i] - m) * scale_log2);
            top[i] = m;
            const float offset = m * scale_log2;
            float sum = 0.0f;
            #pragma unroll
            for (int j = 0; j < KEYS / 8; ++j) {
                #pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float p = kept[j][e] ? exp2f(fmaf(s[j][2 * i + e], scale_log2, -offset)) : 0.0f;
                    s[j][2 * i + e] = p;
                    sum += p;
                }
            }
            total[i] = total[i] * rescale[i] + sum;  // this lane's share; the quad is summed at the end
        }
        #pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            o[t][0] *= rescale[0];
            o[t][1] *= rescale[0];
            o[t][2] *= rescale[1];
            o[t][3] *= rescale[1];
        }
        // O += P·V over k16 steps of keys; an x4 transposed load of 16 keys x 16 features gives the B
        // fragments of two n8 tiles.
        #pragma unroll
        for (int t = 0; t < KEYS / 16; ++t) {
            unsigned pa[4] = {pack2((T*)0, s[2 * t][0], s[2 * t][1]), pack2((T*)0, s[2 * t][2], s[2 * t][3]),
                              pack2((T*)0, s[2 * t + 1][0], s[2 * t + 1][1]),
                              pack2((T*)0, s[2 * t + 1][2], s[2 * t + 1][3])};
            unsigned pl[4];
            if (SPLIT_P) {  // the rounding error of P, itself rounded: P = hi + lo to ~16 bits
                #pragma unroll
                for (int r = 0; r < 4; ++r) {
                    float hi0, hi1;
                    unpack2((T*)0, pa[r], hi0, hi1);
                    const int j = 2 * t + (r >> 1), k = 2 * (r & 1);
                    pl[r] = pack2((T*)0, s[j][k] - hi0, s[j][k + 1] - hi1);
                }
            }
            #pragma unroll
            for (int d = 0; d < D / 8; d += 2) {
                unsigned vb[4];
                ldmatrix_x4_trans(vb, vs + (t * 16 + (lane & 15)) * STRIDE + d * 8 + (lane >> 4) * 8);
                mma16816((T*)0, o[d], pa, vb[0], vb[1]);
                mma16816((T*)0, o[d + 1], pa, vb[2], vb[3]);
                if (SPLIT_P) {
                    mma16816((T*)0, o[d], pl, vb[0], vb[1]);
                    mma16816((T*)0, o[d + 1], pl, vb[2], vb[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with this stage before the next prefetch refills it
    }
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
        float t = total[i];
        t += __shfl_xor_sync(0xffffffffu, t, 1);
        t += __shfl_xor_sync(0xffffffffu, t, 2);
        total[i] = t == 0.0f ? 0.0f : 1.0f / t;  // 0: every key masked; NaN stays NaN
    }
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
        const unsigned q = q_block + warp * 16 + g + 8 * i;
        if (q >= n) continue;
        T* dst = out + (span.first + q) * hidden + blockIdx.y * (u64)D + c2;
        #pragma unroll
        for (int t = 0; t < D / 8; ++t)
            *reinterpret_cast<unsigned*>(dst + t * 8) = pack2(dst, o[t][2 * i] * total[i], o[t][2 * i + 1] * total[i]);
    }
}
