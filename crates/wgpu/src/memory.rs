//! [`WgpuBuffer`] and the arenas raw allocations are carved from.
//!
//! Creating a `wgpu::Buffer` per allocation is slow (on Vulkan especially), so raw allocations up to a
//! quarter of an arena are ranges of large arena buffers (first fit over a sorted free list, neighbours
//! merged on free); larger ones get a buffer of their own. An arena whose every range is free again is
//! released, so `empty_cache` gives memory back. Every range starts on an [`ALIGNMENT`] boundary, and
//! every buffer may be bound as storage and copied from and to.
//!
//! Promises: a range is handed out once until it is freed; a refusal of the driver is
//! [`RuntimeError::DeviceOutOfMemory`] with the bytes asked for (wgpu's out-of-memory error scope around
//! the buffer's creation), as is a request larger than the adapter's largest buffer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use braid_runtime::device::ALIGNMENT;
use braid_runtime::{Result, RuntimeError};
use parking_lot::Mutex;

use crate::device::block_on;

/// Usages every buffer of braid's has: bound as storage, copied from and to.
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// One raw allocation: `len` bytes from `base` in `buffer` (an arena's, or its own). A plain handle:
/// dropping it frees nothing; `Device::free_raw` does.
#[derive(Debug)]
pub struct WgpuBuffer {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) base: u64,
    len: u64,
    /// The arena it was carved from (its slot in [`Arenas`]), or `None` for a buffer of its own.
    arena: Option<usize>,
}

impl WgpuBuffer {
    /// Bytes allocated.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the allocation is empty (never: raw allocations have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Free ranges of one arena (offset → length, sorted, never adjacent).
#[derive(Debug, PartialEq)]
struct FreeRanges(BTreeMap<u64, u64>);

impl FreeRanges {
    /// All of `[0, len)` free.
    fn new(len: u64) -> Self {
        Self(BTreeMap::from([(0, len)]))
    }

    /// First fit: the lowest free range of at least `len` bytes.
    fn take(&mut self, len: u64) -> Option<u64> {
        let (&offset, &free_len) = self.0.iter().find(|(_, &l)| l >= len)?;
        self.0.remove(&offset);
        if free_len > len {
            self.0.insert(offset + len, free_len - len);
        }
        Some(offset)
    }

    /// Returns `[offset, offset + len)`, merged with free neighbours.
    fn give_back(&mut self, mut offset: u64, mut len: u64) {
        if let Some((&before, &before_len)) = self.0.range(..offset).next_back() {
            if before + before_len == offset {
                self.0.remove(&before);
                offset = before;
                len += before_len;
            }
        }
        if let Some(after_len) = self.0.remove(&(offset + len)) {
            len += after_len;
        }
        self.0.insert(offset, len);
    }

    /// Whether all of `[0, len)` is free.
    fn all_free(&self, len: u64) -> bool {
        self.0.get(&0) == Some(&len)
    }
}

/// One arena: a buffer and its free ranges.
struct Arena {
    buffer: wgpu::Buffer,
    free: FreeRanges,
}

/// The device's arenas and its count of raw bytes in use.
pub(crate) struct Arenas {
    arenas: Mutex<Vec<Option<Arena>>>,
    arena_bytes: u64,
    max_buffer: u64,
    allocated: AtomicUsize,
}

impl Arenas {
    /// Arenas of `arena_bytes` (a multiple of [`ALIGNMENT`]); no buffer may exceed `max_buffer`.
    pub(crate) fn new(arena_bytes: u64, max_buffer: u64) -> Self {
        Self {
            arenas: Mutex::new(Vec::new()),
            arena_bytes,
            max_buffer,
            allocated: AtomicUsize::new(0),
        }
    }

    /// Raw bytes handed out and not yet freed.
    pub(crate) fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    pub(crate) fn alloc(&self, device: &wgpu::Device, bytes: usize) -> Result<WgpuBuffer> {
        let len = (bytes.max(1) as u64).div_ceil(ALIGNMENT as u64) * ALIGNMENT as u64;
        let buffer = if len > self.arena_bytes / 4 {
            WgpuBuffer {
                buffer: create(device, len, self.max_buffer, bytes)?,
                base: 0,
                len,
                arena: None,
            }
        } else {
            self.carve(device, len, bytes)?
        };
        self.allocated.fetch_add(len as usize, Ordering::Relaxed);
        Ok(buffer)
    }

    fn carve(&self, device: &wgpu::Device, len: u64, bytes: usize) -> Result<WgpuBuffer> {
        let mut arenas = self.arenas.lock();
        for (slot, arena) in arenas.iter_mut().enumerate() {
            if let Some(arena) = arena {
                if let Some(base) = arena.free.take(len) {
                    return Ok(WgpuBuffer {
                        buffer: arena.buffer.clone(),
                        base,
                        len,
                        arena: Some(slot),
                    });
                }
            }
        }
        let mut arena = Arena {
            buffer: create(device, self.arena_bytes, self.max_buffer, bytes)?,
            free: FreeRanges::new(self.arena_bytes),
        };
        let base = arena
            .free
            .take(len)
            .expect("a new arena holds a quarter of itself");
        let buffer = arena.buffer.clone();
        let slot = match arenas.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                arenas.push(None);
                arenas.len() - 1
            }
        };
        arenas[slot] = Some(arena);
        Ok(WgpuBuffer {
            buffer,
            base,
            len,
            arena: Some(slot),
        })
    }

    /// Frees `buffer` (no pending work uses it: the caller's promise). True when a `wgpu::Buffer` was
    /// released (its own, or an arena left empty): the device then forgets bind groups that bind it.
    pub(crate) fn free(&self, buffer: WgpuBuffer) -> bool {
        self.allocated
            .fetch_sub(buffer.len as usize, Ordering::Relaxed);
        let Some(slot) = buffer.arena else {
            return true; // its own buffer: dropping the last handle releases it once the queue is done with it
        };
        let mut arenas = self.arenas.lock();
        let arena = arenas[slot]
            .as_mut()
            .expect("a range is freed into the live arena it came from");
        arena.free.give_back(buffer.base, buffer.len);
        if arena.free.all_free(arena.buffer.size()) {
            arenas[slot] = None;
            return true;
        }
        false
    }
}

/// A buffer of `len` bytes, or the device's refusal as `DeviceOutOfMemory` for `requested`.
fn create(
    device: &wgpu::Device,
    len: u64,
    max_buffer: u64,
    requested: usize,
) -> Result<wgpu::Buffer> {
    if len > max_buffer {
        return Err(RuntimeError::DeviceOutOfMemory {
            requested,
            detail: format!("the adapter's largest buffer is {max_buffer} bytes"),
        });
    }
    let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("braid"),
        size: len,
        usage: USAGE,
        mapped_at_creation: false,
    });
    match block_on(scope.pop()) {
        None => Ok(buffer),
        Some(error) => Err(RuntimeError::DeviceOutOfMemory {
            requested,
            detail: error.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::FreeRanges;

    #[test]
    fn first_fit_and_merging_with_both_neighbours() {
        let mut free = FreeRanges::new(1024);
        let (a, b, c) = (free.take(256), free.take(256), free.take(256));
        assert_eq!((a, b, c), (Some(0), Some(256), Some(512)));
        assert_eq!(free.take(512), None, "only 256 bytes are left");
        free.give_back(0, 256);
        free.give_back(512, 256);
        assert_eq!(
            free,
            FreeRanges([(0, 256), (512, 512)].into()),
            "512 merged with the tail"
        );
        free.give_back(256, 256);
        assert!(
            free.all_free(1024),
            "three ranges and the tail merged into one: {free:?}"
        );
        assert_eq!(free.take(1024), Some(0));
    }
}
