// Copies len bytes from byte src_at of src to byte dst_at of dst, one thread per destination word,
// keeping the bytes of a partly covered word that lie outside the range. For ranges wgpu's copies do
// not take (not 4-byte aligned, or two ranges of one buffer).
struct Params { src_at: u32, dst_at: u32, len: u32, words: u32 }
var<immediate> p: Params;
@group(0) @binding(0) var<storage, read_write> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

fn src_byte(at: u32) -> u32 {
    return (src[at / 4u] >> ((at % 4u) * 8u)) & 0xffu;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (w >= p.words) {
        return;
    }
    let word = p.dst_at / 4u + w;
    let first = word * 4u;
    let whole = first >= p.dst_at && first + 4u <= p.dst_at + p.len;
    if (whole && (p.src_at % 4u) == (p.dst_at % 4u)) {
        dst[word] = src[(first - p.dst_at + p.src_at) / 4u];
        return;
    }
    var value = dst[word];
    for (var b = 0u; b < 4u; b = b + 1u) {
        let at = first + b;
        if (at >= p.dst_at && at < p.dst_at + p.len) {
            let shift = b * 8u;
            value = (value & ~(0xffu << shift)) | (src_byte(at - p.dst_at + p.src_at) << shift);
        }
    }
    dst[word] = value;
}
