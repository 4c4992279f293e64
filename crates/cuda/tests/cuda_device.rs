//! The device on its own: construction with and without a driver, raw buffers and views, copies,
//! non-blocking downloads (and their pooled staging), host functions, out of memory, and use after
//! shutdown. GPU tests skip on a machine without a driver (see `common`).

mod common;

use braid_cuda::{CudaBuffer, CudaDevice};
use braid_runtime::device::{Device, View, ALIGNMENT};
use braid_runtime::RuntimeError;
use common::{device_or_skip, mismatches, Rng};

/// The first `len` bytes of `buffer`.
fn whole(buffer: &CudaBuffer, len: usize) -> View<'_, CudaDevice> {
    View::new(buffer, len)
}

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
        assert_eq!(a.ptr() % ALIGNMENT as u64, 0, "cuMemAlloc alignment");
        assert_eq!(a.len(), len);
        let want = rng.bytes(len);
        let mut src = want.clone();
        device
            .copy_from_host(&stream, &src, whole(&a, len))
            .unwrap();
        // The contract: the caller may reuse `src` as soon as copy_from_host returns.
        src.fill(0x5A);
        device
            .copy_device(&stream, whole(&a, len), whole(&b, len))
            .unwrap();
        let mut got = vec![0u8; len];
        device
            .copy_to_host(&stream, whole(&b, len), &mut got)
            .unwrap();
        assert_eq!(mismatches(&got, &want), 0, "{len} bytes round trip");
        // SAFETY: a and b came from alloc_raw on this device, are freed once, and copy_to_host waited
        // for the copy that was the last work using them on the only stream that used them.
        unsafe {
            device.free_raw(a);
            device.free_raw(b);
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
        let at = View {
            buffer: &dst,
            offset: i * CHUNK,
            len: CHUNK,
        };
        device.copy_from_host(&stream, &src, at).unwrap();
    }
    let mut got = vec![0u8; CHUNK * CHUNKS];
    device
        .copy_to_host(&stream, whole(&dst, CHUNK * CHUNKS), &mut got)
        .unwrap();
    assert_eq!(mismatches(&got, &want), 0);
    // SAFETY: allocated above, freed once, the copies using it have run (copy_to_host waited).
    unsafe { device.free_raw(dst) };
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
    // A download behind the failure reports it too.
    let buffer = device.alloc_raw(64).unwrap();
    let download = device.download(&stream, whole(&buffer, 64)).unwrap();
    match device.finish_download(download, &mut [0u8; 64]) {
        Err(RuntimeError::StreamFailed { stream: 3, message }) => {
            assert!(message.contains("deliberate test panic"), "{message}")
        }
        other => panic!("expected StreamFailed on stream 3 from the download, got {other:?}"),
    }
    match device.synchronize(&stream) {
        Err(RuntimeError::StreamFailed { stream: 3, message }) => {
            assert!(message.contains("deliberate test panic"), "{message}")
        }
        other => panic!("expected StreamFailed on stream 3, got {other:?}"),
    }
    // SAFETY: allocated above, freed once; the stream has drained (synchronize waited).
    unsafe { device.free_raw(buffer) };
    assert!(
        !ran_after.load(std::sync::atomic::Ordering::SeqCst),
        "later host functions are skipped"
    );
    device.shutdown_stream(&stream);
}

/// Asking for more than the device has is `DeviceOutOfMemory` with the bytes asked for (so the caching
/// allocator retries after freeing its cache), not a generic device error, and carries no allocator
/// statistics (the backend has none).
#[test]
fn allocating_past_device_memory_is_device_out_of_memory() {
    let Some(device) = device_or_skip() else {
        return;
    };
    match device.alloc_raw(device.memory_capacity() * 2) {
        Err(RuntimeError::DeviceOutOfMemory { requested, detail }) => {
            assert_eq!(requested, device.memory_capacity() * 2);
            assert!(detail.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{detail}");
        }
        other => panic!("expected DeviceOutOfMemory, got {other:?}"),
    }
    // The device is still usable afterwards.
    let buffer = device.alloc_raw(1024).unwrap();
    // SAFETY: allocated above, freed once, never used by any stream.
    unsafe { device.free_raw(buffer) };
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
    let buffer = device.alloc_raw(256).unwrap();
    assert!(matches!(
        device.copy_from_host(&stream, &[1, 2, 3], whole(&buffer, 3)),
        Err(RuntimeError::Dropped { .. })
    ));
    assert!(matches!(
        device.download(&stream, whole(&buffer, 3)),
        Err(RuntimeError::Dropped { .. })
    ));
    assert!(matches!(
        device.synchronize(&stream),
        Err(RuntimeError::Dropped { .. })
    ));
    // SAFETY: allocated above, freed once; the copy and download were refused, so no work uses it.
    unsafe { device.free_raw(buffer) };
}

/// A download returns before its copy has run: while a host function holds the stream, the download is
/// not ready; once released, `finish_download` gives the bytes written before it (not those written
/// after), read from a view at an offset inside its buffer.
#[test]
fn a_download_returns_at_once_and_finishes_with_the_bytes_before_it() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(1).unwrap();
    const LEN: usize = (3 << 20) + 123;
    const OFFSET: usize = 4096;
    let buffer = device.alloc_raw(OFFSET + LEN).unwrap();
    let view = View {
        buffer: &buffer,
        offset: OFFSET,
        len: LEN,
    };
    let want = Rng::new(5).bytes(LEN);
    device.copy_from_host(&stream, &want, view).unwrap();
    let (release, held) = std::sync::mpsc::channel::<()>();
    device
        .launch_host_fn(&stream, move || {
            let _ = held.recv();
        })
        .unwrap();
    let download = device.download(&stream, view).unwrap();
    // Work encoded after the download does not change what it reads.
    device
        .copy_from_host(&stream, &vec![0xEE; LEN], view)
        .unwrap();
    assert!(
        !device.download_ready(&download).unwrap(),
        "the stream is held, so the copy has not run"
    );
    release.send(()).unwrap();
    let mut got = vec![0u8; LEN];
    device.finish_download(download, &mut got).unwrap();
    assert_eq!(mismatches(&got, &want), 0);
    device.synchronize(&stream).unwrap();
    // SAFETY: allocated above, freed once, its stream drained.
    unsafe { device.free_raw(buffer) };
    device.shutdown_stream(&stream);
}

/// Steady state allocates no page-locked memory: after a warm-up, repeated downloads of the same sizes
/// (finished, and dropped unfinished) reuse the stream's download buffers.
#[test]
fn downloads_reuse_their_page_locked_buffers() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(1).unwrap();
    let sizes = [4, 4096, 100_000, (1 << 20) + 1];
    let len = *sizes.iter().max().unwrap();
    let buffer = device.alloc_raw(len).unwrap();
    let want = Rng::new(6).bytes(len);
    device
        .copy_from_host(&stream, &want, whole(&buffer, len))
        .unwrap();
    let round = |drop_unfinished: bool| {
        for &n in &sizes {
            let download = device.download(&stream, whole(&buffer, n)).unwrap();
            if drop_unfinished {
                drop(download);
                // The pool reclaims an orphan at the next download once its copy has run; wait for
                // that here so the count below does not depend on timing.
                device.synchronize(&stream).unwrap();
            } else {
                let mut got = vec![0u8; n];
                device.finish_download(download, &mut got).unwrap();
                assert_eq!(mismatches(&got, &want[..n]), 0, "{n} bytes");
            }
        }
        device.synchronize(&stream).unwrap();
    };
    round(false);
    round(true);
    let warm = stream.pinned_download_bytes();
    assert!(warm > 0, "downloads were staged in page-locked memory");
    for i in 0..50 {
        round(i % 3 == 0);
    }
    assert_eq!(
        stream.pinned_download_bytes(),
        warm,
        "no page-locked memory allocated in steady state"
    );
    // SAFETY: allocated above, freed once, its stream drained.
    unsafe { device.free_raw(buffer) };
    device.shutdown_stream(&stream);
}

/// A download dropped unfinished, then its stream shut down and the device dropped: nothing is freed
/// under the copy (the pool keeps its buffers until the copy has run) and the download may still be
/// finished after the shutdown.
#[test]
fn downloads_outlive_their_stream_safely() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(2).unwrap();
    const LEN: usize = 2 << 20;
    let buffer = device.alloc_raw(LEN).unwrap();
    let want = Rng::new(8).bytes(LEN);
    device
        .copy_from_host(&stream, &want, whole(&buffer, LEN))
        .unwrap();
    let (release, held) = std::sync::mpsc::channel::<()>();
    device
        .launch_host_fn(&stream, move || {
            let _ = held.recv();
        })
        .unwrap();
    let dropped = device.download(&stream, whole(&buffer, LEN)).unwrap();
    let kept = device.download(&stream, whole(&buffer, LEN)).unwrap();
    drop(dropped); // the copy has not run: its buffers become the pool's orphans
    release.send(()).unwrap();
    device.shutdown_stream(&stream); // drains, then releases what is idle
    let mut got = vec![0u8; LEN];
    device.finish_download(kept, &mut got).unwrap();
    assert_eq!(mismatches(&got, &want), 0);
    assert_eq!(
        stream.pinned_download_bytes(),
        0,
        "a shut-down stream keeps nothing idle"
    );
    // SAFETY: allocated above, freed once; the stream that used it has drained.
    unsafe { device.free_raw(buffer) };
}
