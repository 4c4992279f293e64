//! braid's WGSL kernels (`shaders/`), their pipelines, and the one way a kernel is dispatched.
//!
//! # Promises
//!
//! - Every pipeline is created once, when the device is opened; a kernel the driver rejects is a
//!   [`RuntimeError::Device`] then, not a panic later. Kernels whose storage type is `T` (an alias in
//!   the WGSL) get an f16 variant too (`enable f16`, `T = f16`) when the adapter has `SHADER_F16`;
//!   their arithmetic stays f32 (loads convert up, stores round once).
//! - Operands are bound as **windows**: the range of the buffer around the view, starting on the
//!   adapter's storage-offset alignment ([`Binding::window`]); the kernel gets the view's first element
//!   in the window as a parameter. So views at any element offset (K inside `[Q | K | V]`) bind without
//!   copies. Every binding is `read_write` storage: wgpu refuses a buffer bound read-only and writable
//!   in one dispatch, and arenas put most operands in one buffer. Ranges written by one binding never
//!   overlap ranges another reads (the op descriptors' rule).
//! - Parameters (offsets, sizes, strides, scales) travel as immediates (push constants): no uniform
//!   buffer per dispatch. Every kernel's parameters fit [`IMMEDIATE_BYTES`].
//! - Each dispatch is its own compute pass, so wgpu orders it after the commands before it.

use std::num::NonZeroU64;

use braid_runtime::{Result, RuntimeError};

use crate::device::{block_on, Shared};

/// Bytes of immediates every pipeline declares (the largest kernel's parameters: the GEMM's).
const IMMEDIATE_BYTES: usize = 96;

/// The most workgroups along one grid axis (WebGPU's default limit).
const MAX_GROUPS: u64 = 65_535;

/// The kernels, by the order of [`SOURCES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Fill,
    Add,
    BiasGelu,
    Gemm,
    GemmNarrow,
    LayerNorm,
    MaskedSoftmax,
    GatherRows,
    MeanPool,
    L2Normalize,
    ByteCopy,
}

/// The GEMM's source: 4 rows a thread (64-row tiles); `gemm_narrow` is it with 1 (16-row tiles).
const GEMM: &str = include_str!("shaders/gemm.wgsl");

/// The workgroup sum the row kernels share (appended to their sources).
const REDUCE: &str = include_str!("shaders/reduce.wgsl");

/// The most rows (per product) that the narrow GEMM takes.
pub(crate) const NARROW_GEMM_ROWS: usize = 16;

/// Each kernel's name, WGSL and number of storage bindings, in [`Kernel`] order.
const SOURCES: [(Kernel, &str, &str, u32); 11] = [
    (Kernel::Fill, "fill", include_str!("shaders/fill.wgsl"), 1),
    (Kernel::Add, "add", include_str!("shaders/add.wgsl"), 2),
    (
        Kernel::BiasGelu,
        "bias_gelu",
        include_str!("shaders/bias_gelu.wgsl"),
        2,
    ),
    (Kernel::Gemm, "gemm", GEMM, 4),
    (Kernel::GemmNarrow, "gemm_narrow", GEMM, 4),
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

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// The device's pipelines, one per kernel, and the f16 variants.
pub(crate) struct Kernels {
    pipelines: Vec<Pipeline>,
    /// Per kernel, its f16 variant: `None` for kernels with no storage type, or without `SHADER_F16`.
    half: Vec<Option<Pipeline>>,
}

/// One operand's binding: `size` bytes of `buffer` from `start`, the view starting `lead` bytes in.
#[derive(Clone, Copy)]
pub(crate) struct Binding<'a> {
    buffer: &'a wgpu::Buffer,
    start: u64,
    size: u64,
    lead: u64,
}

impl<'a> Binding<'a> {
    /// The window around bytes `[at, at + len)` of `buffer` (see the module doc).
    pub(crate) fn window(
        shared: &Shared,
        buffer: &'a wgpu::Buffer,
        at: u64,
        len: u64,
    ) -> Result<Self> {
        let align = u64::from(shared.limits.min_storage_buffer_offset_alignment).max(4);
        let start = at / align * align;
        let end = ((at + len.max(1)).div_ceil(4) * 4).min(buffer.size());
        let size = end - start;
        let max = shared.limits.max_storage_buffer_binding_size;
        if size > max {
            return Err(RuntimeError::Device(format!(
                "an operand of {len} bytes is larger than the adapter's largest storage binding \
                 ({max} bytes)"
            )));
        }
        Ok(Self {
            buffer,
            start,
            size,
            lead: at - start,
        })
    }

    /// `len` bytes of `buffer` from `at` (aligned), bound as they are.
    pub(crate) fn whole(buffer: &'a wgpu::Buffer, at: u64, len: u64) -> Self {
        Self {
            buffer,
            start: at,
            size: len,
            lead: 0,
        }
    }

    /// The view's first element of `size` bytes within the window (the kernel's offset parameter).
    pub(crate) fn first(&self, size: usize) -> u32 {
        (self.lead / size as u64) as u32
    }
}

/// The grid for `items` work items in workgroups of `per_group`: x up to 65,535 groups, then rows of y.
pub(crate) fn grid(items: u64, per_group: u64) -> Result<[u32; 3]> {
    let groups = items.div_ceil(per_group).max(1);
    let x = groups.min(MAX_GROUPS);
    let y = groups.div_ceil(x);
    if y > MAX_GROUPS {
        return Err(RuntimeError::Device(format!(
            "{items} work items are more than one wgpu dispatch takes"
        )));
    }
    Ok([x as u32, y as u32, 1])
}

impl Kernels {
    /// Compiles every kernel (and, with `f16`, the f16 variants) and creates its pipeline.
    pub(crate) fn new(device: &wgpu::Device, f16: bool) -> Result<Self> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let sources: Vec<(&str, String, u32)> = (SOURCES.iter().enumerate())
            .map(|(i, &(kernel, name, source, bindings))| {
                assert_eq!(kernel as usize, i, "SOURCES is in Kernel order");
                let source = match kernel {
                    Kernel::GemmNarrow => {
                        source.replace("const ROWS: u32 = 4u;", "const ROWS: u32 = 1u;")
                    }
                    Kernel::LayerNorm | Kernel::L2Normalize => format!("{source}\n{REDUCE}"),
                    _ => source.to_string(),
                };
                (name, source, bindings)
            })
            .collect();
        let pipelines = (sources.iter())
            .map(|(name, source, bindings)| pipeline(device, name, source, *bindings))
            .collect();
        let half = (sources.iter())
            .map(|(name, source, bindings)| {
                (f16 && source.contains(STORAGE_F32)).then(|| {
                    let source = source.replace(STORAGE_F32, "");
                    pipeline(device, name, &format!("{STORAGE_F16}\n{source}"), *bindings)
                })
            })
            .collect();
        match block_on(scope.pop()) {
            None => Ok(Self { pipelines, half }),
            Some(error) => Err(RuntimeError::Device(format!(
                "the driver rejected braid's WGSL kernels: {error}"
            ))),
        }
    }

    /// Whether `kernel` has an f16 variant on this device.
    pub(crate) fn has_f16(&self, kernel: Kernel) -> bool {
        self.half[kernel as usize].is_some()
    }

    /// Encodes `kernel` (its f16 variant when `half`) over `groups` with `bindings` (in the shader's
    /// binding order) and `params`.
    pub(crate) fn dispatch(
        &self,
        shared: &Shared,
        encoder: &mut wgpu::CommandEncoder,
        (kernel, half): (Kernel, bool),
        bindings: &[Binding<'_>],
        params: &[u32],
        groups: [u32; 3],
    ) -> Result<()> {
        let pipeline = match half {
            false => &self.pipelines[kernel as usize],
            true => self.half[kernel as usize]
                .as_ref()
                .expect("ops check has_f16 before an f16 dispatch"),
        };
        let entries: Vec<wgpu::BindGroupEntry<'_>> = (bindings.iter().enumerate())
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.start,
                    size: NonZeroU64::new(b.size),
                }),
            })
            .collect();
        let group = shared.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.layout,
            entries: &entries,
        });
        let mut immediates = [0u8; IMMEDIATE_BYTES];
        assert!(
            params.len() * 4 <= IMMEDIATE_BYTES,
            "{kernel:?}'s parameters fit the immediates"
        );
        for (bytes, word) in immediates.chunks_exact_mut(4).zip(params) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.set_immediates(0, &immediates);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        shared
            .dispatches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Encodes a byte copy of `len` bytes from `source`'s view to byte `at` of `target`.
    pub(crate) fn byte_copy(
        &self,
        shared: &Shared,
        encoder: &mut wgpu::CommandEncoder,
        source: Binding<'_>,
        (target, at): (&wgpu::Buffer, u64),
        len: u64,
    ) -> Result<()> {
        let dst = Binding::window(shared, target, at, len)?;
        let words = (dst.lead + len).div_ceil(4) - dst.lead / 4;
        let params = [
            source.lead as u32,
            dst.lead as u32,
            len as u32,
            words as u32,
        ];
        let groups = grid(words, 256)?;
        self.dispatch(
            shared,
            encoder,
            (Kernel::ByteCopy, false),
            &[source, dst],
            &params,
            groups,
        )
    }
}

fn pipeline(device: &wgpu::Device, name: &str, source: &str, bindings: u32) -> Pipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let entries: Vec<wgpu::BindGroupLayoutEntry> = (0..bindings)
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
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(name),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: IMMEDIATE_BYTES as u32,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    Pipeline { pipeline, layout }
}
