//! Events order work across streams on the device without blocking the host, through the runtime's own
//! `StreamPool` and `EventPool` over `CudaDevice`. GPU tests skip without a driver (see `common`).

mod common;

use std::sync::mpsc;

use braid_runtime::device::{Device, View};
use braid_runtime::stream::{EventPool, StreamPool, StreamPoolConfig};
use common::{device_or_skip, mismatches, Rng};

/// Stream A is held by a host function until the test releases it, then writes a buffer; an event
/// recorded after the write makes stream B wait before copying that buffer. While A is held, neither
/// event is complete (the host did not block and B did not run ahead); afterwards B sees every byte
/// A wrote.
///
/// The hold is a channel the host function waits on, not a sleep: the test states an order, not a
/// timing. It also checks that `copy_from_host` does not wait for the stream: the upload is encoded
/// behind the held host function, from the test thread that later releases it. (With pageable staging
/// the driver made that upload wait for the host function — a deadlock, seen on an H100.)
#[test]
fn an_event_orders_stream_b_after_stream_a() {
    let Some(device) = device_or_skip() else {
        return;
    };
    const LEN: usize = 3 << 20;
    let pool = StreamPool::new(device.clone(), StreamPoolConfig::default()).unwrap();
    let events = EventPool::new(device.clone());
    let (a, b) = (pool.stream(1).unwrap(), pool.stream(2).unwrap());
    let (a_raw, b_raw) = (a.raw().unwrap(), b.raw().unwrap());

    let x = device.alloc_raw(LEN).unwrap();
    let y = device.alloc_raw(LEN).unwrap();
    let (xv, yv) = (View::new(&x, LEN), View::new(&y, LEN));
    device.copy_from_host(a_raw, &vec![0u8; LEN], xv).unwrap();
    device.copy_from_host(a_raw, &vec![0u8; LEN], yv).unwrap();
    a.synchronize().unwrap();

    let want = Rng::new(3).bytes(LEN);
    let (release, held) = mpsc::channel::<()>();
    device
        .launch_host_fn(a_raw, move || {
            // Returns when the test sends, or when it panics and drops the sender.
            let _ = held.recv();
        })
        .unwrap();
    device.copy_from_host(a_raw, &want, xv).unwrap();
    let mut written = events.event().unwrap();
    written.record(&a).unwrap();

    b.wait(&written).unwrap();
    device.copy_device(b_raw, xv, yv).unwrap();
    let mut copied = events.event().unwrap();
    copied.record(&b).unwrap();

    assert!(
        !written.query().unwrap(),
        "A is held, so its event is pending"
    );
    assert!(
        !copied.query().unwrap(),
        "B waits for A, so its event is pending"
    );
    release.send(()).unwrap();

    copied.synchronize().unwrap();
    assert!(written.query().unwrap(), "B's work finished after A's");
    let mut got = vec![0u8; LEN];
    device.copy_to_host(b_raw, yv, &mut got).unwrap();
    assert_eq!(
        mismatches(&got, &want),
        0,
        "B copied what A wrote, not the zeros before it"
    );

    pool.synchronize_all().unwrap();
    // SAFETY: both came from alloc_raw, are freed once, and every stream that used them has drained.
    unsafe {
        device.free_raw(x);
        device.free_raw(y);
    }
    assert_eq!(events.created(), 2, "the event pool created two events");
}

/// A never-recorded event is complete, and a recorded one completes after its stream drains.
#[test]
fn event_query_and_synchronize() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let stream = device.create_stream(1).unwrap();
    let event = device.create_event().unwrap();
    assert!(device.query_event(&event).unwrap(), "never recorded");
    device.event_synchronize(&event).unwrap();
    device.record_event(&event, &stream).unwrap();
    device.event_synchronize(&event).unwrap();
    assert!(device.query_event(&event).unwrap());
    device.shutdown_stream(&stream);
}
