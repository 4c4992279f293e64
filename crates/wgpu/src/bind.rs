//! How operands reach a kernel: [`Binding`] (a buffer bound whole, the view's first element passed as
//! a parameter) and [`BindGroups`], the device's cache of bind groups.
//!
//! # Why whole buffers
//!
//! A bind group per dispatch costs a descriptor-set allocation and update in the driver and wgpu's
//! validation and tracking — tens of microseconds on Vulkan, more than a small kernel runs. Operands
//! live in a few large arena buffers (the `memory` module), so binding each buffer whole and passing
//! the view's first element as an immediate makes the bind group depend only on *which buffers* a
//! dispatch uses: a forward pass needs a handful, created once and then found in the cache.
//!
//! # Promises
//!
//! - A buffer up to [`WHOLE_BINDING_MAX`] bytes (and the adapter's largest storage binding) is bound
//!   whole; a larger one is bound as the window around the view (starting on the adapter's
//!   storage-offset alignment), as before, and such bind groups are cached too.
//! - Element offsets fit the kernels' u32 and i32 indices: a whole binding is at most 2 GiB.
//! - The cache holds clones of the buffers it binds, so [`BindGroups::clear`] is called whenever the
//!   memory module releases a `wgpu::Buffer` (an arena emptied, a large allocation freed): the cache
//!   never keeps device memory past its release. Past [`MAX_CACHED`] entries it starts over.
//! - Lookups take a read lock; only a miss takes the write lock.

use std::collections::HashMap;
use std::num::NonZeroU64;

use braid_runtime::{Result, RuntimeError};
use parking_lot::RwLock;

use crate::device::Shared;

/// The largest buffer bound whole (element indices stay below 2^31 at any dtype).
pub(crate) const WHOLE_BINDING_MAX: u64 = 1 << 31;

/// Bind groups kept before the cache starts over (windows of huge buffers are the only way to many).
const MAX_CACHED: usize = 4096;

/// The most workgroups along one grid axis (WebGPU's default limit).
const MAX_GROUPS: u64 = 65_535;

/// One operand's binding: `size` bytes of `buffer` from `start`, the view starting `lead` bytes in.
#[derive(Clone, Copy)]
pub(crate) struct Binding<'a> {
    pub(crate) buffer: &'a wgpu::Buffer,
    pub(crate) start: u64,
    pub(crate) size: u64,
    pub(crate) lead: u64,
}

impl<'a> Binding<'a> {
    /// The binding for bytes `[at, at + len)` of `buffer`: the whole buffer when it may be (see the
    /// module doc), else the window around the range.
    pub(crate) fn window(
        shared: &Shared,
        buffer: &'a wgpu::Buffer,
        at: u64,
        len: u64,
    ) -> Result<Self> {
        let max = shared.limits.max_storage_buffer_binding_size;
        if buffer.size() <= max.min(WHOLE_BINDING_MAX) {
            return Ok(Self::whole(buffer, 0, buffer.size(), at));
        }
        let align = u64::from(shared.limits.min_storage_buffer_offset_alignment).max(4);
        let start = at / align * align;
        let end = ((at + len.max(1)).div_ceil(4) * 4).min(buffer.size());
        let size = end - start;
        if size > max {
            return Err(RuntimeError::Device(format!(
                "an operand of {len} bytes is larger than the adapter's largest storage binding \
                 ({max} bytes)"
            )));
        }
        Ok(Self::whole(buffer, start, size, at - start))
    }

    /// `size` bytes of `buffer` from `start` (aligned), the view `lead` bytes in.
    pub(crate) fn whole(buffer: &'a wgpu::Buffer, start: u64, size: u64, lead: u64) -> Self {
        Self {
            buffer,
            start,
            size,
            lead,
        }
    }

    /// The view's first element of `size` bytes within the binding (the kernel's offset parameter).
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

/// A bind group's identity: its layout (the number of bindings) and each binding's buffer and range.
type Key = (usize, Vec<(wgpu::Buffer, u64, u64)>);

/// The device's bind groups, by the buffers they bind (see the module doc).
#[derive(Default)]
pub(crate) struct BindGroups {
    groups: RwLock<HashMap<Key, wgpu::BindGroup>>,
}

impl BindGroups {
    /// The bind group of `bindings` for `layout` (which has `bindings.len()` entries).
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        layout: &wgpu::BindGroupLayout,
        bindings: &[Binding<'_>],
    ) -> wgpu::BindGroup {
        let key: Key = (
            bindings.len(),
            (bindings.iter())
                .map(|b| (b.buffer.clone(), b.start, b.size))
                .collect(),
        );
        if let Some(group) = self.groups.read().get(&key) {
            return group.clone();
        }
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
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("braid"),
            layout,
            entries: &entries,
        });
        let mut groups = self.groups.write();
        if groups.len() >= MAX_CACHED {
            groups.clear();
        }
        groups.insert(key, group.clone());
        group
    }

    /// Forgets every bind group (a buffer they may bind was released).
    pub(crate) fn clear(&self) {
        self.groups.write().clear();
    }

    /// Bind groups cached now.
    pub(crate) fn len(&self) -> usize {
        self.groups.read().len()
    }
}
