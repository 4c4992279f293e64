//! braid's WGSL kernels (`shaders/`), their pipelines, and the one way a kernel is recorded.
//!
//! # Promises
//!
//! - Every pipeline is created once, when the device is opened; a kernel the driver rejects is a
//!   [`RuntimeError::Device`] then, not a panic later. Kernels whose storage type is `T` (an alias in
//!   the WGSL) get an f16 variant too (`enable f16`, `T = f16`) when the adapter has `SHADER_F16`;
//!   their arithmetic stays f32 (loads convert up, stores round once).
//! - Operands are bound through the `bind` module (whole buffers, cached bind groups); the kernel gets
//!   each view's first element as a parameter. Every binding is `read_write` storage: wgpu refuses a
//!   buffer bound read-only and writable in one dispatch, and arenas put most operands in one buffer.
//!   Ranges written by one binding never overlap ranges another reads (the op descriptors' rule).
//!   Pipelines with the same number of bindings share one bind group layout, so a cached bind group
//!   serves every kernel that binds the same buffers.
//! - Parameters (offsets, sizes, strides, scales) travel as immediates (push constants): no uniform
//!   buffer per dispatch. Every kernel's parameters fit [`IMMEDIATE_BYTES`].
//! - Dispatches are recorded into the stream's open compute pass; wgpu puts a barrier between two
//!   dispatches that use a buffer read-write (every binding here), so each runs after the one before.

use braid_runtime::{Result, RuntimeError};

use crate::bind::{grid, Binding};
use crate::device::{block_on, Shared};

/// Bytes of immediates every pipeline declares (the largest kernel's parameters: the GEMM's).
const IMMEDIATE_BYTES: usize = 96;

/// The most storage bindings a kernel has (LayerNorm's).
const MAX_BINDINGS: usize = 6;

/// The kernels, by the order of [`SOURCES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Fill,
    Add,
    BiasGelu,
    /// The tiled GEMM with 128-row tiles (8 rows a thread).
    Gemm128,
    /// The tiled GEMM with 64-row tiles (4 rows a thread).
    Gemm64,
    /// The few-row GEMM (K split over lanes; `gemm_small.wgsl`).
    GemmSmall,
    Attention,
    /// The fused attention for short sequences (a block of queries per workgroup).
    AttentionBlock,
    LayerNorm,
    MaskedSoftmax,
    GatherRows,
    MeanPool,
    L2Normalize,
    ByteCopy,
}

/// The tiled GEMM's source: 128-row tiles (`GROUPS` 2); the 64-row variant sets 1.
const GEMM: &str = include_str!("shaders/gemm.wgsl");

/// The workgroup sum the row kernels share (appended to their sources).
const REDUCE: &str = include_str!("shaders/reduce.wgsl");

/// Each kernel's name, WGSL and number of storage bindings, in [`Kernel`] order.
const SOURCES: [(Kernel, &str, &str, usize); 14] = [
    (Kernel::Fill, "fill", include_str!("shaders/fill.wgsl"), 1),
    (Kernel::Add, "add", include_str!("shaders/add.wgsl"), 2),
    (
        Kernel::BiasGelu,
        "bias_gelu",
        include_str!("shaders/bias_gelu.wgsl"),
        2,
    ),
    (Kernel::Gemm128, "gemm128", GEMM, 4),
    (Kernel::Gemm64, "gemm64", GEMM, 4),
    (
        Kernel::GemmSmall,
        "gemm_small",
        include_str!("shaders/gemm_small.wgsl"),
        4,
    ),
    (
        Kernel::Attention,
        "attention",
        include_str!("shaders/attention.wgsl"),
        3,
    ),
    (
        Kernel::AttentionBlock,
        "attention_block",
        include_str!("shaders/attention_block.wgsl"),
        3,
    ),
    (
        Kernel::LayerNorm,
        "layer_norm",
        include_str!("shaders/layer_norm.wgsl"),
        6,
    ),
    (
        Kernel::MaskedSoftmax,
        "masked_softmax",
        include_str!("shaders/masked_softmax.wgsl"),
        2,
    ),
    (
        Kernel::GatherRows,
        "gather_rows",
        include_str!("shaders/gather_rows.wgsl"),
        3,
    ),
    (
        Kernel::MeanPool,
        "mean_pool",
        include_str!("shaders/mean_pool.wgsl"),
        3,
    ),
    (
        Kernel::L2Normalize,
        "l2_normalize",
        include_str!("shaders/l2_normalize.wgsl"),
        1,
    ),
    (
        Kernel::ByteCopy,
        "byte_copy",
        include_str!("shaders/byte_copy.wgsl"),
        2,
    ),
];

/// The line a kernel's storage type is set by, and what makes its f16 variant.
const STORAGE_F32: &str = "alias T = f32;";
const STORAGE_F16: &str = "enable f16;\nalias T = f16;";

/// Bytes of workgroup memory `attention_block.wgsl` declares (an adapter with less gets the
/// per-query attention only).
const ATTENTION_BLOCK_BYTES: u32 = (2 * 2112 + 2 * 16 * 64 + 64 + 128) * 4;

/// The device's pipelines, one per kernel, the f16 variants, and the bind group layouts they share.
pub(crate) struct Kernels {
    /// Whether `AttentionBlock` is the real kernel (the adapter's workgroup memory holds it); else its
    /// slot holds the per-query attention and is never dispatched.
    pub(crate) attention_block: bool,
    pipelines: Vec<wgpu::ComputePipeline>,
    /// Per kernel, its f16 variant: `None` for kernels with no storage type, or without `SHADER_F16`.
    half: Vec<Option<wgpu::ComputePipeline>>,
    /// Per kernel, its number of bindings.
    bindings: Vec<usize>,
    /// Layout `i` has `i` storage bindings (index 0 unused).
    layouts: Vec<wgpu::BindGroupLayout>,
}

/// One dispatch, ready to record: the pipeline, its bind group, immediates and grid.
pub(crate) struct Recorded {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    immediates: [u8; IMMEDIATE_BYTES],
    groups: [u32; 3],
}

impl Recorded {
    /// Records the dispatch into `pass`.
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        pass.set_immediates(0, &self.immediates);
        pass.dispatch_workgroups(self.groups[0], self.groups[1], self.groups[2]);
    }
}

impl Kernels {
    /// Compiles every kernel (and, with `f16`, the f16 variants) and creates its pipeline.
    pub(crate) fn new(device: &wgpu::Device, f16: bool) -> Result<Self> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let attention_block =
            device.limits().max_compute_workgroup_storage_size >= ATTENTION_BLOCK_BYTES;
        let layouts: Vec<wgpu::BindGroupLayout> =
            (0..=MAX_BINDINGS).map(|n| layout(device, n)).collect();
        let sources: Vec<(&str, String, usize)> = (SOURCES.iter().enumerate())
            .map(|(i, &(kernel, name, source, bindings))| {
                assert_eq!(kernel as usize, i, "SOURCES is in Kernel order");
                let groups = if kernel == Kernel::Gemm64 { 1 } else { 2 };
                let source = match kernel {
                    Kernel::Gemm64 => {
                        source.replace("const GROUPS: u32 = 2u;", "const GROUPS: u32 = 1u;")
                    }
                    Kernel::LayerNorm | Kernel::L2Normalize => format!("{source}\n{REDUCE}"),
                    Kernel::AttentionBlock if !attention_block => {
                        include_str!("shaders/attention.wgsl").to_string()
                    }
                    _ => source.to_string(),
                };
                let source = unroll(&source, &[("GROUPS", groups)]);
                (name, source, bindings)
            })
            .collect();
        let pipelines = (sources.iter())
            .map(|(name, source, bindings)| pipeline(device, name, source, &layouts[*bindings]))
            .collect();
        let half = (sources.iter())
            .map(|(name, source, bindings)| {
                (f16 && source.contains(STORAGE_F32)).then(|| {
                    let source = source.replace(STORAGE_F32, "");
                    let source = format!("{STORAGE_F16}\n{source}");
                    pipeline(device, name, &source, &layouts[*bindings])
                })
            })
            .collect();
        let bindings = sources.iter().map(|s| s.2).collect();
        match block_on(scope.pop()) {
            None => Ok(Self {
                attention_block,
                pipelines,
                half,
                bindings,
                layouts,
            }),
            Some(error) => Err(RuntimeError::Device(format!(
                "the driver rejected braid's WGSL kernels: {error}"
            ))),
        }
    }

    /// Whether `kernel` has an f16 variant on this device.
    pub(crate) fn has_f16(&self, kernel: Kernel) -> bool {
        self.half[kernel as usize].is_some()
    }

    /// `kernel` (its f16 variant when `half`) over `groups` with `bindings` (in the shader's binding
    /// order) and `params`, ready to record.
    pub(crate) fn prepare(
        &self,
        shared: &Shared,
        (kernel, half): (Kernel, bool),
        bindings: &[Binding<'_>],
        params: &[u32],
        groups: [u32; 3],
    ) -> Recorded {
        let pipeline = match half {
            false => &self.pipelines[kernel as usize],
            true => self.half[kernel as usize]
                .as_ref()
                .expect("ops check has_f16 before an f16 dispatch"),
        };
        let count = self.bindings[kernel as usize];
        assert_eq!(bindings.len(), count, "{kernel:?} binds {count} buffers");
        let group = (shared.bind_groups).get(&shared.device, &self.layouts[count], bindings);
        let mut immediates = [0u8; IMMEDIATE_BYTES];
        assert!(
            params.len() * 4 <= IMMEDIATE_BYTES,
            "{kernel:?}'s parameters fit the immediates"
        );
        for (bytes, word) in immediates.chunks_exact_mut(4).zip(params) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        Recorded {
            pipeline: pipeline.clone(),
            group,
            immediates,
            groups,
        }
    }

    /// A byte copy of `len` bytes from `source`'s view to byte `at` of `target`, ready to record.
    pub(crate) fn byte_copy(
        &self,
        shared: &Shared,
        source: Binding<'_>,
        (target, at): (&wgpu::Buffer, u64),
        len: u64,
    ) -> Result<Recorded> {
        let dst = Binding::window(shared, target, at, len)?;
        let words = (dst.lead + len).div_ceil(4) - dst.lead / 4;
        let params = [
            source.lead as u32,
            dst.lead as u32,
            len as u32,
            words as u32,
        ];
        let groups = grid(words, 256)?;
        Ok(self.prepare(
            shared,
            (Kernel::ByteCopy, false),
            &[source, dst],
            &params,
            groups,
        ))
    }
}

/// Expands the `// unroll NAME COUNT` ... `// end unroll` blocks of a WGSL source: the lines between
/// are repeated COUNT times (a number, or a name in `counts`), `{NAME}` replaced by 0, 1, …; blocks
/// nest. Drivers do not unroll WGSL's loops, and an array indexed in a loop that is not unrolled lives
/// in local memory, so the kernels spell out their register tiles this way.
pub(crate) fn unroll(source: &str, counts: &[(&str, usize)]) -> String {
    let lines: Vec<String> = source.lines().map(str::to_string).collect();
    let mut out = expand(&lines, counts);
    out.push(String::new());
    out.join("\n")
}

fn expand(lines: &[String], counts: &[(&str, usize)]) -> Vec<String> {
    // A directive is exactly `// unroll NAME COUNT` (prose that starts "// unroll" is not one; a
    // directive that is not recognised leaves `{NAME}` in the WGSL, which the compiler rejects).
    let header = |line: &str| -> Option<(String, usize)> {
        let words: Vec<&str> = line
            .trim()
            .strip_prefix("// unroll ")?
            .split_whitespace()
            .collect();
        let [name, count] = words[..] else {
            return None;
        };
        let count = (count.parse().ok())
            .or_else(|| counts.iter().find(|(n, _)| *n == count).map(|c| c.1))?;
        Some((name.to_string(), count))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((name, count)) = header(&lines[i]) else {
            out.push(lines[i].clone());
            i += 1;
            continue;
        };
        let mut depth = 1;
        let mut end = i + 1;
        while depth > 0 {
            let line = lines
                .get(end)
                .expect("every // unroll has its // end unroll")
                .trim();
            if header(line).is_some() {
                depth += 1;
            } else if line == "// end unroll" {
                depth -= 1;
            }
            end += 1;
        }
        let body = &lines[i + 1..end - 1];
        for v in 0..count {
            let copy: Vec<String> = (body.iter())
                .map(|l| l.replace(&format!("{{{name}}}"), &v.to_string()))
                .collect();
            out.extend(expand(&copy, counts));
        }
        i = end;
    }
    out
}

/// The bind group layout of `bindings` read-write storage buffers.
fn layout(device: &wgpu::Device, bindings: usize) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = (0..bindings as u32)
        .map(|binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: false },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("braid storage"),
        entries: &entries,
    })
}

fn pipeline(
    device: &wgpu::Device,
    name: &str,
    source: &str,
    layout: &wgpu::BindGroupLayout,
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(layout)],
        immediate_size: IMMEDIATE_BYTES as u32,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

#[cfg(test)]
mod tests {
    use super::unroll;

    #[test]
    fn unroll_repeats_nested_blocks_with_their_indices() {
        let source = "a\n  // unroll g G\n  // unroll i 2\n  x{g}{i};\n  // end unroll\n  y{g};\n  // end unroll\nb";
        assert_eq!(
            unroll(source, &[("G", 2)]),
            "a\n  x00;\n  x01;\n  y0;\n  x10;\n  x11;\n  y1;\nb\n"
        );
    }
}
