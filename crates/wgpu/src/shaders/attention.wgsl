// Fused multi-head self-attention over the fused qkv matrix [batch, seq, 3 * hidden] (Q | K | V per
// token, heads side by side): one workgroup per (query, head, sequence) computes the query's scores
// against every key, the masked softmax and the weighted sum of the values, and writes the context
// [batch, seq, hidden] with heads interleaved — one dispatch instead of GEMM, softmax, GEMM, and no
// probabilities in memory. Keys with mask[b, j] == 0 get probability 0; a query with no such key gets
// zeros; the maximum propagates NaN (as masked_softmax.wgsl). Reductions run in a fixed order, so
// every run gives the same bits. Takes seq <= MAX_SEQ and head_dim <= MAX_HEAD_DIM (the `ops` module
// falls back to the unfused path past them).
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params { qkv: u32, mask: u32, out: u32, seq: u32, heads: u32, head_dim: u32, scale: f32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> qkv: array<T>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;

const THREADS: u32 = 64u;
const MAX_SEQ: u32 = 512u;
const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> q_s: array<f32, MAX_HEAD_DIM>;
var<workgroup> p_s: array<f32, MAX_SEQ>;
var<workgroup> red: array<f32, THREADS>;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn max_nan(x: f32, y: f32) -> f32 {
    return select(y, x, x > y || is_nan(x));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = wid.x;
    let h = wid.y;
    let bt = wid.z;
    let hidden = p.heads * p.head_dim;
    let row = 3u * hidden;
    let first = p.qkv + bt * p.seq * row;  // token 0 of this sequence
    let head = h * p.head_dim;
    let m = p.mask + bt * p.seq;
    for (var d = lid; d < p.head_dim; d = d + THREADS) {
        q_s[d] = f32(qkv[first + q * row + head + d]);
    }
    workgroupBarrier();
    var top = bitcast<f32>(0xff800000u);
    for (var j = lid; j < p.seq; j = j + THREADS) {
        let key = first + j * row + hidden + head;
        // Four features at a time (independent loads in flight), then the rest.
        var dot4 = vec4<f32>(0.0);
        var d = 0u;
        for (; d + 4u <= p.head_dim; d = d + 4u) {
            let kv = vec4<f32>(f32(qkv[key + d]), f32(qkv[key + d + 1u]), f32(qkv[key + d + 2u]),
                               f32(qkv[key + d + 3u]));
            dot4 = fma(vec4<f32>(q_s[d], q_s[d + 1u], q_s[d + 2u], q_s[d + 3u]), kv, dot4);
        }
        var dot = (dot4.x + dot4.y) + (dot4.z + dot4.w);
        for (; d < p.head_dim; d = d + 1u) {
            dot = dot + q_s[d] * f32(qkv[key + d]);
        }
        let s = dot * p.scale;
        p_s[j] = s;
        if (mask[m + j] != 0.0) {
            top = max_nan(top, s);
        }
    }
    red[lid] = top;
    for (var half = THREADS / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (lid < half) {
            red[lid] = max_nan(red[lid], red[lid + half]);
        }
    }
    workgroupBarrier();
    top = red[0];
    var sum = 0.0;
    for (var j = lid; j < p.seq; j = j + THREADS) {
        var e = 0.0;
        if (mask[m + j] != 0.0) {
            e = exp(p_s[j] - top);
        }
        p_s[j] = e;
        sum = sum + e;
    }
    workgroupBarrier();
    red[lid] = sum;
    for (var half = THREADS / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (lid < half) {
            red[lid] = red[lid] + red[lid + half];
        }
    }
    workgroupBarrier();
    sum = red[0];
    // 0 only when every key is masked; NaN stays NaN.
    let inv = select(1.0 / sum, 0.0, sum == 0.0);
    let value = first + 2u * hidden + head;
    for (var d = lid; d < p.head_dim; d = d + THREADS) {
        // Four keys at a time (independent loads in flight), then the rest.
        var acc4 = vec4<f32>(0.0);
        var j = 0u;
        for (; j + 4u <= p.seq; j = j + 4u) {
            let at = value + j * row + d;
            let vv = vec4<f32>(f32(qkv[at]), f32(qkv[at + row]), f32(qkv[at + 2u * row]),
                               f32(qkv[at + 3u * row]));
            acc4 = fma(vec4<f32>(p_s[j], p_s[j + 1u], p_s[j + 2u], p_s[j + 3u]), vv, acc4);
        }
        var acc = (acc4.x + acc4.y) + (acc4.z + acc4.w);
        for (; j < p.seq; j = j + 1u) {
            acc = acc + p_s[j] * f32(qkv[value + j * row + d]);
        }
        out[p.out + (bt * p.seq + q) * hidden + head + d] = T(acc * inv);
    }
}
