// Fused multi-head attention over qkv [batch, seq, 3 * hidden] (Q | K | V, heads side by side) into
// out [batch, seq, hidden], or over a packed batch (`offsets` given: `sequence_span`, seq the longest;
// blocks past a shorter sequence's end exit at once). Grid (ceil(seq / ATT_QUERIES), heads, batch), ATT_WARPS warps per block; each
// warp owns ATT_PER_WARP queries and works on all of them at once (independent accumulators, so the
// loops are not one long dependency chain). Keys stream through shared memory ATT_KEYS at a time with
// an online softmax (running max and sum in f32, fixed order: deterministic). head_dim <= ATT_MAX_HD.
#define ATT_WARPS 4
#define ATT_QUERIES 16
#define ATT_PER_WARP (ATT_QUERIES / ATT_WARPS)
#define ATT_KEYS 32
#define ATT_MAX_HD 128
#define ATT_LOADS 8
template <typename T>
__device__ void attention(const T* qkv, const float* mask, const unsigned* offsets, T* out, u64 seq, u64 heads,
                          u64 head_dim, float scale) {
    __shared__ float ks[ATT_KEYS][ATT_MAX_HD + 1];  // +1: lanes read different rows, different banks
    __shared__ float vs[ATT_KEYS][ATT_MAX_HD];
    __shared__ float qs[ATT_WARPS][ATT_PER_WARP][ATT_MAX_HD];
    __shared__ float keep[ATT_KEYS];
    const u64 h = blockIdx.y, hidden = heads * head_dim, row = 3 * hidden;
    const Span span = sequence_span(offsets, blockIdx.z, (unsigned)seq);
    if (blockIdx.x * ATT_QUERIES >= span.len) return;  // block-uniform, before any barrier
    const unsigned hd = (unsigned)head_dim, n = span.len;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x & (WARP - 1);
    const unsigned q0 = blockIdx.x * ATT_QUERIES + warp * ATT_PER_WARP;
    const T* base = qkv + span.first * row + h * head_dim;
    #pragma unroll
    for (int i = 0; i < ATT_PER_WARP; ++i)  // queries past the end compute on zeros and store nothing
        for (unsigned d = lane; d < hd; d += WARP)
            qs[warp][i][d] = q0 + i < n ? load(base + (q0 + i) * row + d) * scale : 0.0f;
    const float neg_inf = __int_as_float(0xff800000);
    float top[ATT_PER_WARP], total[ATT_PER_WARP], acc[ATT_PER_WARP][ATT_MAX_HD / WARP];
    #pragma unroll
    for (int i = 0; i < ATT_PER_WARP; ++i) {
        top[i] = neg_inf;
        total[i] = 0.0f;
        #pragma unroll
        for (int c = 0; c < ATT_MAX_HD / WARP; ++c) acc[i][c] = 0.0f;
    }
    for (unsigned k0 = 0; k0 < n; k0 += ATT_KEYS) {
        __syncthreads();  // the previous tile is no longer read (and qs is written, on the first pass)
        // ATT_LOADS elements of K and of V per thread in flight at once, then stored: a loop that stored
        // each load before issuing the next would wait for global memory once per element.
        for (unsigned e0 = threadIdx.x; e0 < ATT_KEYS * hd; e0 += ATT_LOADS * blockDim.x) {
            float kr[ATT_LOADS], vr[ATT_LOADS];
            #pragma unroll
            for (int u = 0; u < ATT_LOADS; ++u) {
                const unsigned e = e0 + u * blockDim.x, j = e / hd, d = e - j * hd, key = k0 + j;
                const bool in = e < ATT_KEYS * hd && key < n;
                kr[u] = in ? load(base + key * row + hidden + d) : 0.0f;
                vr[u] = in ? load(base + key * row + 2 * hidden + d) : 0.0f;
            }
            #pragma unroll
            for (int u = 0; u < ATT_LOADS; ++u) {
                const unsigned e = e0 + u * blockDim.x, j = e / hd, d = e - j * hd;
                if (e < ATT_KEYS * hd) {
                    ks[j][d] = kr[u];
                    vs[j][d] = vr[u];
                }
            }
        }
        if (threadIdx.x < ATT_KEYS) {
            const unsigned key = k0 + threadIdx.x;
            keep[threadIdx.x] = key < n && mask[span.first + key] != 0.0f ? 1.0f : 0.0f;
        }
        __syncthreads();
        // Scores: lane j holds key k0 + j's score for every query of this warp.
        const bool kept = keep[lane] != 0.0f;
        float s[ATT_PER_WARP];
        #pragma unroll
        for (int i = 0; i < ATT_PER_WARP; ++i) s[i] = 0.0f;
        #pragma unroll 8
        for (unsigned d = 0; d < hd; ++d) {
            const float k = ks[lane][d];
            #pragma unroll
            for (int i = 0; i < ATT_PER_WARP; ++i) s[i] += qs[warp][i][d] * k;
        }
        // Online softmax: new running max, the old sum and context rescaled to it.
        float p[ATT_PER_WARP], rescale[ATT_PER_WARP];
        #pragma unroll
        for (int i = 0; i < ATT_PER_WARP; ++i) {
            const float new_top = max_nan(top[i], warp_max(kept ? s[i] : neg_inf));
            // -infinity only while every key so far is masked or -inf: nothing to rescale (a kept -inf
            // score gives p = NaN). NaN once a kept score is NaN, and it stays NaN: the output is NaN.
            rescale[i] = new_top == neg_inf ? 1.0f : expf(top[i] - new_top);
            p[i] = kept ? expf(s[i] - new_top) : 0.0f;
            top[i] = new_top;
            total[i] = total[i] * rescale[i] + warp_sum(p[i]);
        }
        // Context: lane d accumulates feature d (and d + 32, …) of every query over this tile's keys.
        #pragma unroll
        for (int c = 0; c < ATT_MAX_HD / WARP; ++c) {
            if (c * WARP >= hd) break;  // warp-uniform: every lane shuffles below
            const unsigned d = lane + c * WARP;
            float a[ATT_PER_WARP];
            #pragma unroll
            for (int i = 0; i < ATT_PER_WARP; ++i) a[i] = acc[i][c] * rescale[i];
            #pragma unroll 8
            for (int j = 0; j < ATT_KEYS; ++j) {
                const float v = d < hd ? vs[j][d] : 0.0f;
                #pragma unroll
                for (int i = 0; i < ATT_PER_WARP; ++i) a[i] += __shfl_sync(0xffffffffu, p[i], j) * v;
            }
            #pragma unroll
            for (int i = 0; i < ATT_PER_WARP; ++i) acc[i][c] = a[i];
        }
    }
    #pragma unroll
    for (int i = 0; i < ATT_PER_WARP; ++i) {
        if (q0 + i >= n) break;
        const float inv = total[i] == 0.0f ? 0.0f : 1.0f / total[i];  // 0: every key masked; NaN stays
        #pragma unroll
        for (int c = 0; c < ATT_MAX_HD / WARP; ++c) {
            const unsigned d = lane + c * WARP;
            if (d < hd) store(out + (span.first + q0 + i) * hidden + h * head_dim + d, acc[i][c] * inv);
        }
    }
}

