// Fused multi-head self-attention for short sequences, as attention.wgsl (same parameters, operands
// and semantics: masked keys get probability 0, a query with no kept key gets zeros, NaN propagates,
// fixed reduction order) but one workgroup per (block of 16 queries, head, sequence): the head's keys
// and values are read from memory once per block into workgroup memory (instead of once per query),
// then 8 threads per query compute its scores, softmax and context from there. Takes seq <= 64,
// head_dim <= 64 and seq * (head_dim + 1) <= KV (the `ops` module checks, and uses it only where the
// adapter's workgroup memory holds it).
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params { qkv: u32, mask: u32, out: u32, seq: u32, heads: u32, head_dim: u32, scale: f32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> qkv: array<T>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;

const QB: u32 = 16u;     // queries per workgroup
const LANES: u32 = 8u;   // threads per query
const KV: u32 = 2112u;   // floats of keys (rows padded by one) and of values
const MAX_SEQ: u32 = 64u;
const MAX_HEAD_DIM: u32 = 64u;
var<workgroup> k_s: array<f32, KV>;                 // [seq][head_dim + 1]
var<workgroup> v_s: array<f32, KV>;                 // [seq][head_dim]
var<workgroup> q_s: array<f32, QB * MAX_HEAD_DIM>;  // [QB][head_dim]
var<workgroup> p_s: array<f32, QB * MAX_SEQ>;       // [QB][seq]
var<workgroup> m_s: array<f32, MAX_SEQ>;
var<workgroup> red: array<f32, QB * LANES>;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn max_nan(x: f32, y: f32) -> f32 {
    return select(y, x, x > y || is_nan(x));
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q0 = wid.x * QB;
    let h = wid.y;
    let bt = wid.z;
    let hd = p.head_dim;
    let hidden = p.heads * hd;
    let row = 3u * hidden;
    let first = p.qkv + bt * p.seq * row + h * hd;  // Q of token 0 of this sequence and head
    let queries = min(QB, p.seq - q0);
    for (var i = lid; i < p.seq * hd; i = i + 128u) {
        let j = i / hd;
        let d = i % hd;
        k_s[j * (hd + 1u) + d] = f32(qkv[first + j * row + hidden + d]);
        v_s[i] = f32(qkv[first + j * row + 2u * hidden + d]);
    }
    for (var i = lid; i < queries * hd; i = i + 128u) {
        q_s[i] = f32(qkv[first + (q0 + i / hd) * row + i % hd]);
    }
    for (var j = lid; j < p.seq; j = j + 128u) {
        m_s[j] = mask[p.mask + bt * p.seq + j];
    }
    workgroupBarrier();
    let qi = lid / LANES;
    let lane = lid % LANES;
    let live = qi < queries;
    // Scores of keys lane, lane + 8, … and their kept maximum.
    var top = bitcast<f32>(0xff800000u);
    if (live) {
        for (var j = lane; j < p.seq; j = j + LANES) {
            var dot = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                dot = dot + q_s[qi * hd + d] * k_s[j * (hd + 1u) + d];
            }
            let s = dot * p.scale;
            p_s[qi * MAX_SEQ + j] = s;
            if (m_s[j] != 0.0) {
                top = max_nan(top, s);
            }
        }
    }
    red[lid] = top;
    workgroupBarrier();
    // The query's 8 lanes, in a fixed order.
    top = red[qi * LANES];
    for (var l = 1u; l < LANES; l = l + 1u) {
        top = max_nan(top, red[qi * LANES + l]);
    }
    var sum = 0.0;
    if (live) {
        for (var j = lane; j < p.seq; j = j + LANES) {
            var e = 0.0;
            if (m_s[j] != 0.0) {
                e = exp(p_s[qi * MAX_SEQ + j] - top);
            }
            p_s[qi * MAX_SEQ + j] = e;
            sum = sum + e;
        }
    }
    workgroupBarrier();
    red[lid] = sum;
    workgroupBarrier();
    sum = 0.0;
    for (var l = 0u; l < LANES; l = l + 1u) {
        sum = sum + red[qi * LANES + l];
    }
    // 0 only when every key is masked; NaN stays NaN.
    let inv = select(1.0 / sum, 0.0, sum == 0.0);
    if (live) {
        let at = p.out + (bt * p.seq + q0 + qi) * hidden + h * hd;
        for (var d = lane; d < hd; d = d + LANES) {
            var acc = 0.0;
            for (var j = 0u; j < p.seq; j = j + 1u) {
                acc = acc + p_s[qi * MAX_SEQ + j] * v_s[j * hd + d];
            }
            out[at + d] = T(acc * inv);
        }
    }
}
