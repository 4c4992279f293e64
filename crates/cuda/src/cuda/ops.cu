extern "C" __global__ void braid_fill(float* x, u64 n, float value) {
    GRID_STRIDE(i, n) x[i] = value;
}

template <typename T> __device__ void add(T* x, const T* y, u64 n) {
    GRID_STRIDE(i, n) store(x + i, load(x + i) + load(y + i));
}

// Row-wise elementwise kernels run on a 2-D grid: x strides over the columns, y over the rows, so no
// thread divides by the row length per element.
#define ROWS_2D(r, rows) for (u64 r = blockIdx.y; r < (rows); r += gridDim.y)
#define COLS_2D(j, cols) for (u64 j = blockIdx.x * (u64)blockDim.x + threadIdx.x; j < (cols); j += (u64)gridDim.x * blockDim.x)

template <typename T>
__device__ void bias_gelu(T* x, const T* bias, u64 rows, u64 cols, int use_tanh) {
    ROWS_2D(r, rows) {
        T* xr = x + r * cols;
        COLS_2D(j, cols) {
            const float v = load(xr + j) + load(bias + j);
            store(xr + j, use_tanh ? gelu_tanh(v) : gelu_erf(v));
        }
    }
}

// c[r * ldc + j] += bias[j] for batches of rows x cols at batch stride `batch_stride`.
template <typename T>
__device__ void add_bias(T* c, const T* bias, u64 batches, i64 batch_stride, u64 rows, u64 cols, i64 ldc) {
    ROWS_2D(r, batches * rows) {
        const u64 b = r / rows;
        T* cr = c + b * batch_stride + (r - b * rows) * ldc;
        COLS_2D(j, cols) store(cr + j, load(cr + j) + load(bias + j));
    }
}

// One block per row: out = LayerNorm(x + bias + residual) * gamma + beta (bias, residual optional).
template <typename T>
__device__ void layer_norm(const T* x, const T* bias, const T* residual, const T* gamma, const T* beta,
                           T* out, u64 cols, float eps) {
    __shared__ float partials[WARP];
    const u64 row = blockIdx.x;
    const T* xr = x + row * cols;
    const T* rr = residual ? residual + row * cols : 0;
    T* o = out + row * cols;
    #define LN_INPUT(c) (load(xr + c) + (bias ? load(bias + c) : 0.0f) + (rr ? load(rr + c) : 0.0f))
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) s += LN_INPUT(c);
    const float mean = block_sum(s, partials) / (float)cols;
    float q = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = LN_INPUT(c) - mean;
        q += d * d;
    }
    const float inv = rsqrtf(block_sum(q, partials) / (float)cols + eps);
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x)
        store(o + c, (LN_INPUT(c) - mean) * inv * load(gamma + c) + load(beta + c));
    #undef LN_INPUT
}

// One warp per row of `scores [batch, heads, q, k]`; keys with mask[b, j] == 0 get probability 0. A kept
// NaN or +inf score (or only -inf kept scores) makes the kept keys NaN; a fully masked row is zeros.
template <typename T>
__device__ void masked_softmax(T* scores, const float* mask, u64 rows, u64 rows_per_batch, u64 k, float scale) {
    const u64 row = blockIdx.x * (u64)(blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const int lane = threadIdx.x & (WARP - 1);
    T* r = scores + row * k;
    const float* m = mask + (row / rows_per_batch) * k;
    float top = __int_as_float(0xff800000);  // -infinity (NVRTC has no math.h)
    for (u64 j = lane; j < k; j += WARP) if (m[j] != 0.0f) top = max_nan(top, load(r + j) * scale);
    top = warp_max(top);
    float sum = 0.0f;
    for (u64 j = lane; j < k; j += WARP) {
        const float e = m[j] != 0.0f ? expf(load(r + j) * scale - top) : 0.0f;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;  // 0 only when every key is masked; NaN stays NaN
    for (u64 j = lane; j < k; j += WARP)
        store(r + j, m[j] != 0.0f ? expf(load(r + j) * scale - top) * inv : 0.0f);
}

// out[i, :] (+)= table[ids[i], :]; an id out of range writes NaN (the tensor layer checks ids first).
template <typename T>
__device__ void gather_rows(const T* table, u64 table_rows, const unsigned* ids, u64 n_ids, u64 dim, T* out,
                            int accumulate) {
    GRID_STRIDE(i, n_ids * dim) {
        const u64 id = ids[i / dim];
        const float v = id < table_rows ? load(table + id * dim + i % dim) : __int_as_float(0x7fc00000);
        store(out + i, accumulate ? load(out + i) + v : v);
    }
}

// out[b, d] = Σ_s x[b, s, d] * mask[b, s] / max(Σ_s mask[b, s], 1e-9). Grid (batch, ceil(dim / 32)) of
// POOL_WARPS warps: lane = feature, the warps stride over the sequence, their partials summed in order.
#define POOL_WARPS 8
template <typename T>
__device__ void mean_pool(const T* x, const float* mask, const unsigned* offsets, u64 batch, u64 seq, u64 dim,
                          T* out) {
    __shared__ float sums[POOL_WARPS][WARP];
    __shared__ float counts[POOL_WARPS];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x & (WARP - 1);
    const u64 b = blockIdx.x, d = blockIdx.y * (u64)WARP + lane;
    const Span span = sequence_span(offsets, b, (unsigned)seq);
    float acc = 0.0f, count = 0.0f;
    for (u64 s = warp; s < span.len; s += POOL_WARPS) {
        const float m = mask[span.first + s];
        if (m != 0.0f && d < dim) acc += m * load(x + (span.first + s) * dim + d);
        count += m;
    }
    sums[warp][lane] = acc;
    if (lane == 0) counts[warp] = count;
    __syncthreads();
    if (warp == 0 && d < dim) {
        float a = 0.0f, c = 0.0f;
        for (int w = 0; w < POOL_WARPS; ++w) {
            a += sums[w][lane];
            c += counts[w];
        }
        store(out + b * dim + d, a / fmaxf(c, 1e-9f));
    }
}

// One block per row: x /= max(|x|, 1e-12).
template <typename T> __device__ void l2_normalize(T* x, u64 dim) {
    __shared__ float partials[WARP];
    T* r = x + blockIdx.x * dim;
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < dim; c += blockDim.x) s += load(r + c) * load(r + c);
    const float inv = 1.0f / fmaxf(sqrtf(block_sum(s, partials)), 1e-12f);
    for (u64 c = threadIdx.x; c < dim; c += blockDim.x) store(r + c, load(r + c) * inv);
}

