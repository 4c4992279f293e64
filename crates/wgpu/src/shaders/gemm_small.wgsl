// C = alpha * A.B + beta * C (+ bias[n] on every row) for products with few rows (a batch of one or a
// few sentences), the same parameters and operands as gemm.wgsl. A tiled kernel gives such products a
// handful of workgroups, each walking all of K with a barrier per step (latency-bound); here each
// workgroup takes 16 rows x 8 columns and splits K over 32 lanes per column, every lane walking its
// share (two steps at a time, 34 independent loads in flight) with no barrier, then the 32 partial sums
// of each output are added in a fixed order (deterministic). Lanes read neighbouring k, so a weight
// stored k-contiguous (a linear layer's) is read in whole 128-byte lines. Rows past m are clamped to
// row m - 1 and discarded. `// unroll` blocks are expanded by the `kernels` module (drivers do not
// unroll WGSL's loops: an array indexed in a loop lives in slow local memory).
// T: the storage type (f32; f16 in the variant the `kernels` module makes); arithmetic is f32.
alias T = f32;
struct Params {
    m: u32, n: u32, k: u32, inner: u32,
    a: u32, a_row: i32, a_col: i32, a_outer: i32, a_inner: i32,
    b: u32, b_row: i32, b_col: i32, b_outer: i32, b_inner: i32,
    c: u32, c_row: i32, c_col: i32, c_outer: i32, c_inner: i32,
    bias: u32, has_bias: u32, alpha: f32, beta: f32,
}
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> a: array<T>;
@group(0) @binding(1) var<storage, read_write> b: array<T>;
@group(0) @binding(2) var<storage, read_write> c: array<T>;
@group(0) @binding(3) var<storage, read_write> bias: array<T>;

const ROWS: u32 = 16u;
const COLS: u32 = 8u;
const LANES: u32 = 32u;
// partial[lane * ROWS * COLS + (output ^ lane)]: the XOR spreads both the writes (one output, 32
// lanes) and the reads (32 outputs, one lane) over all 32 banks.
var<workgroup> partial: array<f32, ROWS * COLS * LANES>;

// Where row r (clamped to m - 1) of A starts.
fn row_at(base: i32, r: u32) -> i32 {
    return base + i32(min(r, p.m - 1u)) * p.a_row;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * ROWS;
    let lane = lid % LANES;
    let col = lid / LANES;
    let outer = i32(wid.z / p.inner);
    let inner = i32(wid.z % p.inner);
    let a_base = i32(p.a) + outer * p.a_outer + inner * p.a_inner;
    let b_base = i32(p.b) + outer * p.b_outer + inner * p.b_inner;
    let c_base = i32(p.c) + outer * p.c_outer + inner * p.c_inner;
    let n = min(wid.x * COLS + col, p.n - 1u);
    let b_at = b_base + i32(n) * p.b_col;
    // Rows 4q .. 4q + 3 of the workgroup's 16: where they start, and their sums.
    // unroll q 4
    let ra{q} = vec4<i32>(row_at(a_base, row0 + 4u * {q}u), row_at(a_base, row0 + 4u * {q}u + 1u),
                          row_at(a_base, row0 + 4u * {q}u + 2u), row_at(a_base, row0 + 4u * {q}u + 3u));
    var acc{q} = vec4<f32>(0.0);
    // end unroll
    var k = lane;
    for (; k + LANES < p.k; k = k + 2u * LANES) {
        // unroll s 2
        {
            let kb = k + {s}u * LANES;
            let bv = vec4<f32>(f32(b[b_at + i32(kb) * p.b_row]));
            let ka = i32(kb) * p.a_col;
            // unroll q 4
            let av{q} = vec4<f32>(f32(a[ra{q}.x + ka]), f32(a[ra{q}.y + ka]), f32(a[ra{q}.z + ka]),
                                  f32(a[ra{q}.w + ka]));
            // end unroll
            // unroll q 4
            acc{q} = fma(av{q}, bv, acc{q});
            // end unroll
        }
        // end unroll
    }
    if (k < p.k) {
        let bv = vec4<f32>(f32(b[b_at + i32(k) * p.b_row]));
        let ka = i32(k) * p.a_col;
        // unroll q 4
        acc{q} = fma(vec4<f32>(f32(a[ra{q}.x + ka]), f32(a[ra{q}.y + ka]), f32(a[ra{q}.z + ka]),
                               f32(a[ra{q}.w + ka])), bv, acc{q});
        // end unroll
    }
    let lane_base = lane * ROWS * COLS;
    // unroll q 4
    partial[lane_base + (((4u * {q}u) * COLS + col) ^ lane)] = acc{q}.x;
    partial[lane_base + (((4u * {q}u + 1u) * COLS + col) ^ lane)] = acc{q}.y;
    partial[lane_base + (((4u * {q}u + 2u) * COLS + col) ^ lane)] = acc{q}.z;
    partial[lane_base + (((4u * {q}u + 3u) * COLS + col) ^ lane)] = acc{q}.w;
    // end unroll
    workgroupBarrier();
    if (lid < ROWS * COLS) {
        var sum = 0.0;
        // unroll l 32
        sum = sum + partial[{l}u * ROWS * COLS + (lid ^ {l}u)];
        // end unroll
        let r = row0 + lid / COLS;
        let cn = wid.x * COLS + lid % COLS;
        if (r < p.m && cn < p.n) {
            let at = c_base + i32(r) * p.c_row + i32(cn) * p.c_col;
            var v = p.alpha * sum;
            if (p.beta != 0.0) {
                v = v + p.beta * f32(c[at]);
            }
            if (p.has_bias != 0u) {
                v = v + f32(bias[p.bias + cn]);
            }
            c[at] = T(v);
        }
    }
}
