//! The device on its own: construction with and without a driver, raw memory, copies, host functions,
//! out of memory, and use after shutdown. GPU tests skip on a machine without a driver (see `common`).

mod common;

use braid_cuda::CudaDevice;
use braid_runtime::{Device, RuntimeError, ALIGNMENT};
use common::{device_or_skip, mismatches, Rng};

/// Without a driver `CudaDevice::new` is a clear error (never a panic); with one it opens device 0.
#[test]
fn new_is_a_clear_error_without_a_driver_and_succeeds_with_one() {
    match CudaDevice::new(0) {
        Ok(device) => {
            assert!(CudaDevice::is_available());
            assert_eq!(device.backend(), "cuda");
            let description = device.describe();
            assert!(description.contains("compute capability"), "{description}");
            assert!(description.contains("CUDA driver"), "{description}");
            assert!(device.memory_capacity() > 0);
            println!("opened {description}");
        }
        Err(e) => {
            assert!(!CudaDevice::is_available());
            assert_eq!(CudaDevice::device_count(), 0);
            let message = e.to_string();
            assert!(
                matches!(e, RuntimeError::Device(_)),
                "a Device error, got {e:?}"
            );
            assert!(
                message.contains("no CUDA"),
                "the message says what is missing: {message}"
            );
            assert!(
                message.contains("braid's CPU backend works without one"),
                "the message points at the CPU backend: {message}"
            );
            println!("as expected without a driver: {message}");
        }
    }
    // An ordinal past the last device is an error too, never a panic.
    let e = CudaDevice::new(10_000).expect_err("there is no device 10000");
    assert!(matches!(e, RuntimeError::Device(_)), "{e:?}");
}

/// Random bytes survive host → device → device → host at sizes across the staging paths (pinned size
/// classes, the 1 MiB chunk boundary, chunked copies), while the source is overwritten right after each
/// upload.
#[test]
fn alloc_and_copy_round_trip_random_bytes() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(1).unwrap();
    let mut rng = Rng::new(1);
    for len in [
        1,
        255,
        256,
        4096,
        4097,
        65_536 + 7,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        9 << 20,
    ] {
        let a = device.alloc_raw(len).unwrap();
        let b = device.alloc_raw(len).unwrap();
        assert_eq!(a.0 % ALIGNMENT as u64, 0, "cuMemAlloc alignment");
        let want = rng.bytes(len);
        let mut src = want.clone();
        device.copy_from_host(&stream, &src, a).unwrap();
        // The contract: the caller may reuse `src` as soon as copy_from_host returns.
        src.fill(0x5A);
        device.copy_device(&stream, a, b, len).unwrap();
        let mut got = vec![0u8; len];
        device.copy_to_host(&stream, b, &mut got).unwrap();
        assert_eq!(mismatches(&got, &want), 0, "{len} bytes round trip");
        // SAFETY: a and b came from alloc_raw(len) on this device, are freed once, and copy_to_host
        // synchronized the only stream that used them.
        unsafe {
            device.free_raw(a, len);
            device.free_raw(b, len);
        }
    }
    assert_eq!(device.raw_allocated(), 0);
    let pinned = stream.pinned_staging_bytes();
    assert!(pinned > 0, "copies were staged in page-locked memory");
    // After a synchronize every buffer is idle, and a stream keeps at most 16 MiB of idle ones (the 9 MiB
    // copy went in 1 MiB chunks; the total staged here is well past that).
    assert!(pinned <= 16 << 20, "{pinned} idle pinned bytes kept");
    device.shutdown_stream(&stream);
}

/// Many uploads encoded back to back (no synchronize between them) all land: staging buffers are not
/// reused while a copy still reads them.
#[test]
fn back_to_back_uploads_keep_their_staging_until_copied() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(1).unwrap();
    const CHUNK: usize = 3000;
    const CHUNKS: usize = 512;
    let dst = device.alloc_raw(CHUNK * CHUNKS).unwrap();
    let mut rng = Rng::new(2);
    let want = rng.bytes(CHUNK * CHUNKS);
    let mut src = vec![0u8; CHUNK];
    for (i, chunk) in want.chunks(CHUNK).enumerate() {
        src.copy_from_slice(chunk);
        device
            .copy_from_host(&stream, &src, dst.offset(i * CHUNK))
            .unwrap();
    }
    let mut got = vec![0u8; CHUNK * CHUNKS];
    device.copy_to_host(&stream, dst, &mut got).unwrap();
    assert_eq!(mismatches(&got, &want), 0);
    // SAFETY: allocated above, freed once, its stream synchronized by copy_to_host.
    unsafe { device.free_raw(dst, CHUNK * CHUNKS) };
    device.shutdown_stream(&stream);
}

/// Host functions run in stream order, after the copies encoded before them.
#[test]
fn host_functions_run_in_stream_order() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(1).unwrap();
    let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    for i in 0..100 {
        let order = order.clone();
        device
            .launch_host_fn(&stream, move || order.lock().push(i))
            .unwrap();
    }
    device.synchronize(&stream).unwrap();
    assert_eq!(*order.lock(), (0..100).collect::<Vec<_>>());
    device.shutdown_stream(&stream);
}

/// A panicking host function fails its stream (reported by synchronize), as a faulting kernel would.
#[test]
fn a_panicking_host_function_fails_the_stream() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(3).unwrap();
    device
        .launch_host_fn(&stream, || panic!("deliberate test panic"))
        .unwrap();
    let ran_after = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran_after.clone();
    device
        .launch_host_fn(&stream, move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        })
        .unwrap();
    match device.synchronize(&stream) {
        Err(RuntimeError::StreamFailed { stream: 3, message }) => {
            assert!(message.contains("deliberate test panic"), "{message}")
        }
        other => panic!("expected StreamFailed on stream 3, got {other:?}"),
    }
    assert!(
        !ran_after.load(std::sync::atomic::Ordering::SeqCst),
        "later host functions are skipped"
    );
    device.shutdown_stream(&stream);
}

/// Asking for more than the device has is `OutOfMemory` (so the caching allocator retries after freeing
/// its cache), not a generic device error.
#[test]
fn allocating_past_device_memory_is_out_of_memory() {
    let Some(device) = device_or_skip() else {
        return;
    };
    match device.alloc_raw(device.memory_capacity() * 2) {
        Err(RuntimeError::OutOfMemory { requested, .. }) => {
            assert_eq!(requested, device.memory_capacity() * 2)
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // The device is still usable afterwards.
    let ptr = device.alloc_raw(1024).unwrap();
    // SAFETY: allocated above, freed once, never used by any stream.
    unsafe { device.free_raw(ptr, 1024) };
}

/// A stream used after its shutdown reports `Dropped` instead of touching a destroyed handle.
#[test]
fn a_stream_used_after_shutdown_is_dropped() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(0).unwrap();
    device.shutdown_stream(&stream);
    device.shutdown_stream(&stream); // idempotent
    assert!(stream.cu_stream().is_null());
    let ptr = device.alloc_raw(256).unwrap();
    assert!(matches!(
        device.copy_from_host(&stream, &[1, 2, 3], ptr),
        Err(RuntimeError::Dropped { .. })
    ));
    assert!(matches!(
        device.synchronize(&stream),
        Err(RuntimeError::Dropped { .. })
    ));
    // SAFETY: allocated above, freed once; the copy was refused, so no work uses it.
    unsafe { device.free_raw(ptr, 256) };
}
