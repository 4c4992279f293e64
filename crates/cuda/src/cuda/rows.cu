// Vectorised row kernels: 16 bytes per load and store (8 halves or 4 floats), for rows whose width is a
// multiple of the vector and whose operands are 16-byte aligned (the launches check; other shapes take
// the scalar kernels above).

// x[r, c] = gelu(x[r, c] + bias[c]) over `chunks` vectors of V elements, `row_chunks` of them per row.
// One vector per thread per step: the erf makes this kernel arithmetic-heavy, so occupancy (few
// registers) pays more than several loads in flight per thread (measured: unrolling by 2 was slower);
// f16/bf16 use the cheaper erf (`gelu_erf_fast`).
template <typename T>
__device__ void bias_gelu_vec(T* x, const T* bias, unsigned chunks, unsigned row_chunks, int use_tanh) {
    const int V = Vec<T>::N;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks; i += gridDim.x * blockDim.x) {
        const unsigned col = (i % row_chunks) * V;
        float v[V], b[V];
        load_vec(x + (u64)i * V, v);
        load_vec(bias + col, b);
        #pragma unroll
        for (int e = 0; e < V; ++e) v[e] = use_tanh ? gelu_tanh(v[e] + b[e]) : gelu_erf_for(x, v[e] + b[e]);
        store_vec(x + (u64)i * V, v);
    }
}

// out[r, :] (+)= table[ids[r], :] by vectors: `row_chunks` vectors of V elements a row, `chunks` in all;
// an id out of range gives NaN (the tensor layer checks ids first), as the scalar kernel.
template <typename T>
__device__ void gather_rows_vec(const T* table, unsigned table_rows, const unsigned* ids, unsigned chunks,
                                unsigned row_chunks, T* out, int accumulate) {
    const int V = Vec<T>::N;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks; i += gridDim.x * blockDim.x) {
        const unsigned r = i / row_chunks, c = i - r * row_chunks, id = ids[r];
        float v[V];
        if (id < table_rows) {
            load_vec(table + ((u64)id * row_chunks + c) * V, v);
        } else {
            #pragma unroll
            for (int e = 0; e < V; ++e) v[e] = __int_as_float(0x7fc00000);
        }
        if (accumulate) {
            float o[V];
            load_vec(out + (u64)i * V, o);
            #pragma unroll
            for (int e = 0; e < V; ++e) v[e] += o[e];
        }
        store_vec(out + (u64)i * V, v);
    }
}

// LANES lanes per row (16 or 32; 32 / LANES rows per warp): out = LayerNorm(x + bias + residual) * gamma
// + beta, the row held in registers (lane l of a row owns vectors l, l + LANES, ...; at most LN_VECS
// each). Narrow rows take 16 lanes so that every lane holds the same number of vectors (MiniLM's 384
// f16 columns: 48 vectors, 3 per lane). Sums: each lane's values in index order, then a butterfly over
// the row's lanes — a fixed order, so the same bits every run.
#define LN_VECS 4
#define LN_WARPS 8
template <int LANES> __device__ __forceinline__ float row_sum(float v) {
    #pragma unroll
    for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T, int LANES>
__device__ void layer_norm_rows(const T* x, const T* bias, const T* residual, const T* gamma, const T* beta,
                                T* out, u64 rows, unsigned cols, float eps) {
    const int V = Vec<T>::N;
    const u64 row = blockIdx.x * (u64)(LN_WARPS * WARP / LANES) + threadIdx.x / LANES;
    // Lanes of a row past the end still join the shuffles (full-warp masks); they load and store nothing.
    const bool active = row < rows;
    const unsigned lane = threadIdx.x % LANES, vecs = active ? cols / V : 0;
    const T* xr = x + row * cols;
    const T* rr = residual ? residual + row * cols : 0;
    float v[LN_VECS][V];
    float s = 0.0f;
    #pragma unroll
    for (int i = 0; i < LN_VECS; ++i) {
        const unsigned c = (lane + i * LANES) * V;
        if (lane + i * LANES < vecs) {
            load_vec(xr + c, v[i]);
            if (bias) {
                float t[V];
                load_vec(bias + c, t);
                #pragma unroll
                for (int e = 0; e < V; ++e) v[i][e] += t[e];
            }
            if (rr) {
                float t[V];
                load_vec(rr + c, t);
                #pragma unroll
                for (int e = 0; e < V; ++e) v[i][e] += t[e];
            }
            #pragma unroll
            for (int e = 0; e < V; ++e) s += v[i][e];
        }
    }
    const float mean = row_sum<LANES>(s) / (float)cols;
    float q = 0.0f;
    #pragma unroll
    for (int i = 0; i < LN_VECS; ++i) {
        if (lane + i * LANES < vecs) {
            #pragma unroll
            for (int e = 0; e < V; ++e) {
                const float d = v[i][e] - mean;
                q += d * d;
            }
        }
    }
    const float inv = rsqrtf(row_sum<LANES>(q) / (float)cols + eps);
    #pragma unroll
    for (int i = 0; i < LN_VECS; ++i) {
        const unsigned c = (lane + i * LANES) * V;
        if (lane + i * LANES < vecs) {
            float g[V], b[V];
            load_vec(gamma + c, g);
            load_vec(beta + c, b);
            #pragma unroll
            for (int e = 0; e < V; ++e) v[i][e] = (v[i][e] - mean) * inv * g[e] + b[e];
            store_vec(out + row * cols + c, v[i]);
        }
    }
}
