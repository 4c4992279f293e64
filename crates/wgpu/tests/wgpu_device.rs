//! The `Device` contract on wgpu, case by case: copies of any alignment (within one arena buffer too)
//! keep the bytes around them; events complete after their stream's work; the commit policy decides
//! how many dispatches go into one submit; bad input and use after shutdown are errors, not panics.
//! Skips with a line saying so without an adapter.

mod common;

use braid_runtime::conformance::Rng;
use braid_runtime::device::{Device, View};
use braid_runtime::{CommitPolicy, Runtime, RuntimeConfig, RuntimeError};
use braid_wgpu::WgpuDevice;

#[test]
fn copies_of_any_alignment_keep_the_bytes_around_them() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let stream = device.create_stream(1).unwrap();
    // Two raw allocations small enough to be ranges of one arena buffer.
    let (one, two) = (
        device.alloc_raw(1024).unwrap(),
        device.alloc_raw(1024).unwrap(),
    );
    let mut rng = Rng::new(3);
    let mut want_one = rng.bytes(1024);
    let mut want_two = rng.bytes(1024);
    device
        .copy_from_host(&stream, &want_one, View::new(&one, 1024))
        .unwrap();
    device
        .copy_from_host(&stream, &want_two, View::new(&two, 1024))
        .unwrap();
    let at = |buffer, offset, len| View {
        buffer,
        offset,
        len,
    };
    // Unaligned upload: bytes 3..8 of `one`.
    let five = rng.bytes(5);
    device
        .copy_from_host(&stream, &five, at(&one, 3, 5))
        .unwrap();
    want_one[3..8].copy_from_slice(&five);
    // Unaligned copy within one buffer (source and target ranges of `one`).
    device
        .copy_device(&stream, at(&one, 1, 13), at(&one, 101, 13))
        .unwrap();
    want_one.copy_within(1..14, 101);
    // Aligned copy within one buffer, and an aligned and a misaligned copy between two buffers.
    device
        .copy_device(&stream, at(&one, 0, 64), at(&one, 512, 64))
        .unwrap();
    want_one.copy_within(0..64, 512);
    device
        .copy_device(&stream, at(&one, 256, 128), at(&two, 0, 128))
        .unwrap();
    want_two[..128].copy_from_slice(&want_one[256..384]);
    device
        .copy_device(&stream, at(&one, 2, 31), at(&two, 701, 31))
        .unwrap();
    want_two[701..732].copy_from_slice(&want_one[2..33]);
    // Downloads: an unaligned view (non-blocking, checked after the next work is encoded) and both
    // whole buffers.
    let pending = device.download(&stream, at(&two, 699, 37)).unwrap();
    let mut got_one = vec![0u8; 1024];
    device
        .copy_to_host(&stream, View::new(&one, 1024), &mut got_one)
        .unwrap();
    let mut got_two = vec![0u8; 1024];
    device
        .copy_to_host(&stream, View::new(&two, 1024), &mut got_two)
        .unwrap();
    let mut got_part = vec![0u8; 37];
    assert!(
        device.download_ready(&pending).unwrap(),
        "its copy ran before the later ones"
    );
    device.finish_download(pending, &mut got_part).unwrap();
    assert_eq!(got_one, want_one);
    assert_eq!(got_two, want_two);
    assert_eq!(got_part, want_two[699..736]);
    device.synchronize(&stream).unwrap();
    // SAFETY: both came from this device's alloc_raw and the stream has drained.
    unsafe {
        device.free_raw(one);
        device.free_raw(two);
    }
    assert_eq!(device.raw_allocated(), 0);
}

#[test]
fn events_complete_after_their_streams_work() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let (first, second) = (
        device.create_stream(1).unwrap(),
        device.create_stream(2).unwrap(),
    );
    let event = device.create_event().unwrap();
    assert!(
        device.query_event(&event).unwrap(),
        "a never-recorded event is complete"
    );
    device.record_event(&event, &first).unwrap();
    assert!(
        device.query_event(&event).unwrap(),
        "nothing was encoded before it"
    );
    let buffer = device.alloc_raw(8 << 20).unwrap();
    let bytes = vec![7u8; 8 << 20];
    device
        .copy_from_host(&first, &bytes, View::new(&buffer, bytes.len()))
        .unwrap();
    device.record_event(&event, &first).unwrap();
    device.wait_event(&second, &event).unwrap();
    let mut got = vec![0u8; bytes.len()];
    device
        .copy_to_host(&second, View::new(&buffer, bytes.len()), &mut got)
        .unwrap();
    assert!(got == bytes, "the second stream saw the first one's upload");
    device.event_synchronize(&event).unwrap();
    assert!(device.query_event(&event).unwrap());
    device.synchronize(&first).unwrap();
    // SAFETY: from this device's alloc_raw; both streams have drained.
    unsafe { device.free_raw(buffer) };
}

#[test]
fn the_commit_policy_sets_how_many_dispatches_go_in_one_submit() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    // A submit batch of one: every commit of the runtime submits.
    device.set_submit_batch(1);
    let rt = Runtime::new(device.clone(), RuntimeConfig::default()).unwrap();
    let y = rt.from_f32(&[1.0; 64], &[64]).unwrap();
    let mut x = rt.from_f32(&[0.0; 64], &[64]).unwrap();
    let stream = rt.current_stream().unwrap();
    stream.synchronize().unwrap();
    let mut per_policy = Vec::new();
    for policy in [CommitPolicy::On, CommitPolicy::Off] {
        rt.streams().set_commit_policy(policy);
        let before = device.counters();
        for _ in 0..10 {
            rt.add_assign(&mut x, &y).unwrap();
        }
        stream.synchronize().unwrap();
        let after = device.counters();
        per_policy.push((
            after.dispatches - before.dispatches,
            after.submits - before.submits,
        ));
    }
    assert_eq!(
        per_policy,
        [(10, 10), (10, 1)],
        "(dispatches, submits) under on, off"
    );
    assert_eq!(rt.to_vec_f32(&x).unwrap(), vec![20.0; 64]);
    // A batch larger than the ops: `on` submits only when the stream has nothing in flight, and the
    // synchronize submits the rest, so between 1 and 10 submits, and the same result.
    device.set_submit_batch(1000);
    rt.streams().set_commit_policy(CommitPolicy::On);
    let before = device.counters();
    for _ in 0..10 {
        rt.add_assign(&mut x, &y).unwrap();
    }
    stream.synchronize().unwrap();
    let submits = device.counters().submits - before.submits;
    assert!((1..=10).contains(&submits), "{submits} submits");
    assert_eq!(rt.to_vec_f32(&x).unwrap(), vec![30.0; 64]);
}

#[test]
fn bad_input_and_use_after_shutdown_are_errors() {
    let Some(device) = common::device_or_skip() else {
        return;
    };
    let unknown = WgpuDevice::with_adapter(Some("no such adapter")).unwrap_err();
    assert!(
        matches!(&unknown, RuntimeError::Device(m) if m.contains("BRAID_WGPU_ADAPTER")),
        "{unknown}"
    );
    match device.alloc_raw(1 << 50) {
        Err(RuntimeError::DeviceOutOfMemory { requested, .. }) => assert_eq!(requested, 1 << 50),
        Err(e) => panic!("expected DeviceOutOfMemory, got {e}"),
        Ok(_) => panic!("a petabyte was granted"),
    }
    let stream = device.create_stream(1).unwrap();
    let buffer = device.alloc_raw(256).unwrap();
    device.shutdown_stream(&stream);
    let after = device.copy_from_host(&stream, &[1, 2, 3, 4], View::new(&buffer, 4));
    assert!(
        matches!(after, Err(RuntimeError::Dropped { .. })),
        "{after:?}"
    );
    device.synchronize(&stream).unwrap();
    // SAFETY: from this device's alloc_raw; nothing was encoded with it.
    unsafe { device.free_raw(buffer) };
}
