#define WARP 32
typedef unsigned long long u64;
typedef long long i64;

// Storage types: f32 as float; f16 and bf16 as 16-bit patterns converted to and from f32 around every
// computation (no cuda_fp16.h, so the source needs no include path under NVRTC).
struct h16 { unsigned short bits; };
struct b16 { unsigned short bits; };
__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const h16* p) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->bits));
    return f;
}
__device__ __forceinline__ float load(const b16* p) { return __uint_as_float(((unsigned)p->bits) << 16); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(h16* p, float v) {
    unsigned short b;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(b) : "f"(v));
    p->bits = b;
}
__device__ __forceinline__ void store(b16* p, float v) {  // round to nearest even; NaN stays NaN
    const unsigned u = __float_as_uint(v);
    p->bits = (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)0x7fc0
                                              : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// max that propagates NaN (fmaxf returns the other operand), so a NaN score is not skipped.
__device__ __forceinline__ float max_nan(float a, float b) { return a > b || a != a ? a : b; }
__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the block, the same bits in every thread: warp sums, then the warp partials in index order.
__device__ float block_sum(float v, float* partials) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & (WARP - 1)) == 0) partials[threadIdx.x / WARP] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < blockDim.x / WARP; ++w) total += partials[w];
    return total;
}
__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}
__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
// GELU with erf from Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 in erf; with the approximate
// reciprocal and exp2, ~3e-7 in all): two MUFU operations and ~12 others instead of erff's ~25. For
// f16/bf16 storage only, whose rounding (>= 2.4e-4 relative) is far coarser; f32 keeps erff.
__device__ __forceinline__ float gelu_erf_fast(float x) {
    const float z = fabsf(x) * 0.7071067811865476f;
    float t, e;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(t) : "f"(fmaf(0.3275911f, z, 1.0f)));
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(-z * z * 1.4426950408889634f));
    const float poly =
        t * fmaf(t, fmaf(t, fmaf(t, fmaf(t, 1.061405429f, -1.453152027f), 1.421413741f), -0.284496736f),
                 0.254829592f);
    const float erf_z = copysignf(fmaf(-poly, e, 1.0f), x);  // erf(x / sqrt 2)
    return 0.5f * x * (1.0f + erf_z);
}
// The erf GELU a storage type's vector kernel uses: exact for f32, the fast form for 16-bit types.
__device__ __forceinline__ float gelu_erf_for(const float*, float x) { return gelu_erf(x); }
template <typename T> __device__ __forceinline__ float gelu_erf_for(const T*, float x) { return gelu_erf_fast(x); }
#define GRID_STRIDE(i, n) \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)


// 16-byte vectors: VEC<T> elements of storage type T per load or store, widened to (rounded from) f32.
// The pointer must be 16-byte aligned (the launches check it).
template <typename T> struct Vec { static const int N = 8; };
template <> struct Vec<float> { static const int N = 4; };
__device__ __forceinline__ float half_lo(unsigned w) {
    float f;
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo; }" : "=f"(f) : "r"(w));
    return f;
}
__device__ __forceinline__ float half_hi(unsigned w) {
    float f;
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi; }" : "=f"(f) : "r"(w));
    return f;
}
// Two f32 as one 32-bit word of two 16-bit values, `lo` in the low half, rounded to nearest even.
__device__ __forceinline__ unsigned pack2(h16*, float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ unsigned pack2(b16*, float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ void unpack2(h16*, unsigned w, float& lo, float& hi) { lo = half_lo(w); hi = half_hi(w); }
__device__ __forceinline__ void unpack2(b16*, unsigned w, float& lo, float& hi) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ void load_vec(const float* p, float (&v)[4]) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
template <typename T> __device__ __forceinline__ void load_vec(const T* p, float (&v)[8]) {
    const uint4 t = *reinterpret_cast<const uint4*>(p);
    unpack2((T*)0, t.x, v[0], v[1]);
    unpack2((T*)0, t.y, v[2], v[3]);
    unpack2((T*)0, t.z, v[4], v[5]);
    unpack2((T*)0, t.w, v[6], v[7]);
}
__device__ __forceinline__ void store_vec(float* p, const float (&v)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
template <typename T> __device__ __forceinline__ void store_vec(T* p, const float (&v)[8]) {
    uint4 t;
    t.x = pack2(p, v[0], v[1]);
    t.y = pack2(p, v[2], v[3]);
    t.z = pack2(p, v[4], v[5]);
    t.w = pack2(p, v[6], v[7]);
    *reinterpret_cast<uint4*>(p) = t;
}

// Sequence `b` of a batch: its first row and its token count. Packed (`offsets` given): rows
// offsets[b] .. offsets[b + 1]; padded: rows b * n .. b * n + n. The mask is indexed by row either way.
struct Span {
    u64 first;
    unsigned len;
};
__device__ __forceinline__ Span sequence_span(const unsigned* offsets, u64 b, unsigned n) {
    if (offsets != nullptr) return Span{offsets[b], offsets[b + 1] - offsets[b]};
    return Span{b * n, n};
}
