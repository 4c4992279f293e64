// One set of entry points per storage type: braid_<op>_<dtype>.
#define BRAID_KERNELS(S, T) \
extern "C" __global__ void braid_add_##S(T* x, const T* y, u64 n) { add(x, y, n); } \
extern "C" __global__ void braid_bias_gelu_##S(T* x, const T* bias, u64 rows, u64 cols, int use_tanh) { \
    bias_gelu(x, bias, rows, cols, use_tanh); } \
extern "C" __global__ void braid_add_bias_##S(T* c, const T* bias, u64 batches, i64 batch_stride, u64 rows, \
    u64 cols, i64 ldc) { add_bias(c, bias, batches, batch_stride, rows, cols, ldc); } \
extern "C" __global__ void braid_layer_norm_##S(const T* x, const T* bias, const T* residual, \
    const T* gamma, const T* beta, T* out, u64 cols, float eps) { \
    layer_norm(x, bias, residual, gamma, beta, out, cols, eps); } \
extern "C" __global__ void braid_masked_softmax_##S(T* scores, const float* mask, u64 rows, \
    u64 rows_per_batch, u64 k, float scale) { masked_softmax(scores, mask, rows, rows_per_batch, k, scale); } \
extern "C" __global__ void braid_attention_##S(const T* qkv, const float* mask, const unsigned* offsets, T* out, \
    u64 seq, u64 heads, u64 hd, float scale) { attention(qkv, mask, offsets, out, seq, heads, hd, scale); } \
extern "C" __global__ void braid_gather_rows_##S(const T* table, u64 table_rows, const unsigned* ids, \
    u64 n_ids, u64 dim, T* out, int accumulate) { gather_rows(table, table_rows, ids, n_ids, dim, out, accumulate); } \
extern "C" __global__ void braid_mean_pool_##S(const T* x, const float* mask, const unsigned* offsets, u64 batch, \
    u64 seq, u64 dim, T* out) { mean_pool(x, mask, offsets, batch, seq, dim, out); } \
extern "C" __global__ void braid_l2_normalize_##S(T* x, u64 dim) { l2_normalize(x, dim); } \
extern "C" __global__ void braid_gather_rows_vec_##S(const T* table, unsigned table_rows, const unsigned* ids, \
    unsigned chunks, unsigned row_chunks, T* out, int accumulate) { \
    gather_rows_vec(table, table_rows, ids, chunks, row_chunks, out, accumulate); } \
extern "C" __global__ void braid_bias_gelu_vec_##S(T* x, const T* bias, unsigned chunks, unsigned row_chunks, \
    int use_tanh) { bias_gelu_vec(x, bias, chunks, row_chunks, use_tanh); } \
extern "C" __global__ void __launch_bounds__(LN_WARPS * WARP) braid_layer_norm_rows16_##S(const T* x, \
    const T* bias, const T* residual, const T* gamma, const T* beta, T* out, u64 rows, unsigned cols, float eps) { \
    layer_norm_rows<T, 16>(x, bias, residual, gamma, beta, out, rows, cols, eps); } \
extern "C" __global__ void __launch_bounds__(LN_WARPS * WARP) braid_layer_norm_rows32_##S(const T* x, \
    const T* bias, const T* residual, const T* gamma, const T* beta, T* out, u64 rows, unsigned cols, float eps) { \
    layer_norm_rows<T, 32>(x, bias, residual, gamma, beta, out, rows, cols, eps); }

BRAID_KERNELS(f32, float)
BRAID_KERNELS(f16, h16)
BRAID_KERNELS(bf16, b16)

// Tensor-core attention: braid_attention_mma<head_dim>_<dtype>, f16 and bf16 (bf16 with P split).
#define BRAID_MMA_ATTENTION(S, T, D, SPLIT) \
extern "C" __global__ void __launch_bounds__(MMA_WARPS * WARP) braid_attention_mma##D##_##S(const T* qkv, \
    const float* mask, const unsigned* offsets, T* out, unsigned seq, unsigned heads, float scale_log2) { \
    attention_mma<T, D, SPLIT>(qkv, mask, offsets, out, seq, heads, scale_log2); }
BRAID_MMA_ATTENTION(f16, h16, 32, false)
BRAID_MMA_ATTENTION(f16, h16, 64, false)
BRAID_MMA_ATTENTION(f16, h16, 128, false)
BRAID_MMA_ATTENTION(bf16, b16, 32, true)
BRAID_MMA_ATTENTION(bf16, b16, 64, true)
BRAID_MMA_ATTENTION(bf16, b16, 128, true)
