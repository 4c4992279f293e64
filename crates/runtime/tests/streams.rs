//! Stream pool, leases, current stream, events and commit policy: every public operation and error path.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{
    AllocatorConfig, CachingAllocator, CommitPolicy, EventPool, ExhaustionPolicy, RuntimeError,
    StreamPool, StreamPoolConfig,
};
use common::on_stream;

fn pool(workers: usize, exhaustion: ExhaustionPolicy) -> StreamPool<CpuDevice> {
    let config = StreamPoolConfig {
        worker_slots: workers,
        exhaustion,
        ..Default::default()
    };
    StreamPool::new(CpuDevice::new(), config).unwrap()
}

#[test]
fn thread_leases_a_slot_on_first_use_and_returns_it_on_exit() {
    let pool = Arc::new(pool(4, ExhaustionPolicy::Error));
    let p = pool.clone();
    // A joined thread (not a scoped one: `thread::scope` may return before the thread's thread-locals,
    // which hold the lease, are destroyed).
    std::thread::spawn(move || {
        let a = p.current_stream().unwrap();
        assert!(
            (1..=4).contains(&a.index()),
            "a worker thread gets a worker slot"
        );
        assert_eq!(
            p.current_stream().unwrap(),
            a,
            "the same stream on every call"
        );
        assert_eq!(p.leased_slots(), 1);
    })
    .join()
    .unwrap();
    assert_eq!(
        pool.leased_slots(),
        0,
        "the slot came back when the thread exited"
    );
}

#[test]
fn lease_waits_for_the_streams_work_before_returning_the_slot() {
    let pool = Arc::new(pool(1, ExhaustionPolicy::Error));
    let ran = Arc::new(AtomicUsize::new(0));
    let (p, r) = (pool.clone(), ran.clone());
    std::thread::spawn(move || {
        let stream = p.current_stream().unwrap();
        on_stream(stream, move || {
            std::thread::sleep(Duration::from_millis(30));
            r.store(1, Ordering::SeqCst);
        });
        stream.commit().unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(pool.leased_slots(), 0);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the stream drained before its slot was released"
    );
}

#[test]
fn exhausted_pool_errors_naming_the_limit_and_variable() {
    let pool = pool(2, ExhaustionPolicy::Error);
    let _a = pool.lease().unwrap();
    let _b = pool.lease().unwrap();
    let err = pool.lease().err().expect("third lease must fail");
    let msg = err.to_string();
    assert!(matches!(
        err,
        RuntimeError::StreamSlotsExhausted { slots: 2, .. }
    ));
    assert!(
        msg.contains("all 2 worker stream slots") && msg.contains("BRAID_STREAM_POOL_EXHAUSTED"),
        "{msg}"
    );
}

#[test]
fn exhausted_pool_waits_then_times_out_or_gets_a_released_slot() {
    let pool = pool(1, ExhaustionPolicy::Wait(Duration::from_millis(50)));
    let mut held = pool.lease().unwrap();
    let start = Instant::now();
    let err = pool.lease().err().expect("times out");
    assert!(start.elapsed() >= Duration::from_millis(45));
    assert!(err.to_string().contains("waited 50 ms"), "{err}");

    pool.set_exhaustion_policy(ExhaustionPolicy::Wait(Duration::from_secs(10)));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| pool.lease().map(|l| l.stream().index()));
        std::thread::sleep(Duration::from_millis(20));
        held.release();
        assert_eq!(
            waiter.join().unwrap().unwrap(),
            1,
            "the waiter got the released slot"
        );
    });
}

#[test]
fn exhausted_pool_shares_round_robin() {
    let pool = pool(2, ExhaustionPolicy::Share);
    let a = pool.lease().unwrap();
    let b = pool.lease().unwrap();
    let c = pool.lease().unwrap();
    let d = pool.lease().unwrap();
    assert!(!a.is_shared() && c.is_shared() && d.is_shared());
    assert_ne!(
        c.stream(),
        d.stream(),
        "shared leases rotate over the worker streams"
    );
    assert_eq!(c.stream().users() + d.stream().users(), 4);
    assert!(
        !c.stream().commit_and_continue(),
        "auto turns commit-and-continue off on shared streams"
    );
    drop((c, d));
    assert!(a.stream().commit_and_continue() && b.stream().commit_and_continue());
    assert_eq!(pool.leased_slots(), 2);
}

#[test]
fn double_release_is_harmless() {
    let pool = pool(1, ExhaustionPolicy::Error);
    let mut lease = pool.lease().unwrap();
    lease.release();
    let other = pool.lease().unwrap();
    lease.release();
    drop(lease);
    assert_eq!(
        pool.leased_slots(),
        1,
        "releasing twice did not free another thread's lease"
    );
    drop(other);
    assert_eq!(pool.leased_slots(), 0);
}

#[test]
fn set_current_stream_is_restored_by_its_guard() {
    let pool = pool(4, ExhaustionPolicy::Error);
    std::thread::scope(|s| {
        s.spawn(|| {
            let own = pool.current_stream().unwrap();
            let other = pool.stream(4).unwrap();
            {
                let _g = pool.set_current_stream(other).unwrap();
                assert_eq!(pool.current_stream().unwrap(), other);
                {
                    let _g2 = pool.set_current_stream(pool.default_stream()).unwrap();
                    assert_eq!(pool.current_stream().unwrap().index(), 0);
                }
                assert_eq!(pool.current_stream().unwrap(), other);
            }
            assert_eq!(pool.current_stream().unwrap(), own);
        });
    });
}

#[test]
fn two_pools_on_one_thread_keep_separate_current_streams() {
    let (p1, p2) = (
        pool(2, ExhaustionPolicy::Error),
        pool(2, ExhaustionPolicy::Error),
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            let _g = p1.set_current_stream(p1.stream(2).unwrap()).unwrap();
            let b = p2.current_stream().unwrap();
            assert_eq!(p1.current_stream().unwrap().index(), 2);
            assert_eq!(p2.current_stream().unwrap(), b);
            assert_eq!(p2.leased_slots(), 1);
            assert_eq!(p1.leased_slots(), 0);
        });
    });
}

/// Guards of two pools nested and interleaved on one thread restore each pool's own current stream
/// (the fast path keeps one pool's current index in a single thread-local; switching pools writes it
/// back).
#[test]
fn interleaved_guards_of_two_pools_restore_each_pools_stream() {
    let (p1, p2) = (
        pool(3, ExhaustionPolicy::Error),
        pool(3, ExhaustionPolicy::Error),
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            let leased1 = p1.current_stream().unwrap();
            let g1 = p1.set_current_stream(p1.stream(3).unwrap()).unwrap();
            let g2 = p2.set_current_stream(p2.stream(2).unwrap()).unwrap();
            let g1b = p1.set_current_stream(p1.default_stream()).unwrap();
            assert_eq!(p1.current_stream().unwrap().index(), 0);
            assert_eq!(p2.current_stream().unwrap().index(), 2);
            drop(g1b);
            assert_eq!(p1.current_stream().unwrap().index(), 3);
            drop(g2);
            // p2 had no current stream before its guard: it leases one now.
            let leased2 = p2.current_stream().unwrap();
            assert_ne!(leased2.index(), 0);
            assert_eq!(p1.current_stream().unwrap().index(), 3);
            drop(g1);
            assert_eq!(p1.current_stream().unwrap(), leased1);
            assert_eq!(p2.current_stream().unwrap(), leased2);
        });
    });
}

#[test]
fn stream_index_out_of_range_is_an_error() {
    let pool = pool(3, ExhaustionPolicy::Error);
    assert!(pool.stream(3).is_ok());
    let err = pool.stream(4).unwrap_err().to_string();
    assert!(
        err.contains("stream index") && err.contains("worker_slots"),
        "{err}"
    );
    assert!(StreamPool::new(
        CpuDevice::new(),
        StreamPoolConfig {
            worker_slots: 65,
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn stream_of_a_dropped_pool_reports_dropped() {
    // A stream handle cannot outlive its pool (it borrows it), but a buffer's stream can be reached
    // through the allocator, which keeps the pool's state.
    let pool = pool(2, ExhaustionPolicy::Error);
    let alloc = CachingAllocator::new(&pool, AllocatorConfig::default());
    let buffer = alloc.alloc(1024, pool.stream(1).unwrap()).unwrap();
    buffer.stream().synchronize().unwrap();
    drop(pool);
    let err = buffer.stream().synchronize().unwrap_err();
    assert!(matches!(err, RuntimeError::Dropped { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("after its stream pool was dropped"));
    drop(alloc);
    drop(buffer); // freed directly, after its allocator and pool
}

#[test]
fn a_thread_lease_outliving_its_pool_is_harmless() {
    let pool = Arc::new(pool(2, ExhaustionPolicy::Error));
    let (leased_tx, leased) = crossbeam_channel::bounded::<()>(0);
    let (exit, exit_rx) = crossbeam_channel::bounded::<()>(0);
    let p2 = pool.clone();
    let holder = std::thread::spawn(move || {
        assert_eq!(p2.current_stream().unwrap().index(), 1);
        drop(p2);
        leased_tx.send(()).unwrap();
        exit_rx.recv().unwrap();
        // Thread exit returns the lease to a pool that is gone.
    });
    leased.recv().unwrap();
    assert_eq!(pool.leased_slots(), 1);
    drop(pool);
    exit.send(()).unwrap();
    holder.join().unwrap();
}

#[test]
fn synchronize_all_waits_for_every_created_stream() {
    let pool = pool(8, ExhaustionPolicy::Error);
    let done = Arc::new(AtomicUsize::new(0));
    for i in [0, 3, 8] {
        let done = done.clone();
        on_stream(pool.stream(i).unwrap(), move || {
            std::thread::sleep(Duration::from_millis(10));
            done.fetch_add(1, Ordering::SeqCst);
        });
        pool.stream(i).unwrap().commit().unwrap();
    }
    pool.synchronize_all().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 3);
}

#[test]
fn synchronize_all_races_stream_creation_without_blocking_it() {
    let pool = pool(31, ExhaustionPolicy::Error);
    let barrier = Barrier::new(9);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                barrier.wait();
                let stream = pool.current_stream().unwrap();
                stream.synchronize().unwrap();
            });
        }
        barrier.wait();
        for _ in 0..50 {
            pool.synchronize_all().unwrap();
        }
    });
}

#[test]
fn a_panicking_kernel_fails_its_stream_with_the_message() {
    let pool = pool(1, ExhaustionPolicy::Error);
    let stream = pool.stream(1).unwrap();
    on_stream(stream, || panic!("kernel bug 42"));
    let err = stream.synchronize().unwrap_err();
    assert!(
        matches!(err, RuntimeError::StreamFailed { stream: 1, .. })
            && err.to_string().contains("kernel bug 42"),
        "{err}"
    );
    // Event signals still run on a failed stream, so nobody hangs.
    let events = EventPool::new(pool.device().clone());
    let mut e = events.event().unwrap();
    e.record(&stream).unwrap();
    e.synchronize().unwrap();
}

#[test]
fn events_order_streams_without_blocking_the_host() {
    let pool = pool(2, ExhaustionPolicy::Error);
    let events = EventPool::new(pool.device().clone());
    let (s1, s2) = (pool.stream(1).unwrap(), pool.stream(2).unwrap());
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let l = log.clone();
    on_stream(s1, move || {
        std::thread::sleep(Duration::from_millis(40));
        l.lock().push("s1");
    });
    let mut e = events.event().unwrap();
    assert!(e.query().unwrap(), "a never-recorded event is complete");
    e.record(&s1).unwrap();
    let start = Instant::now();
    s2.wait(&e).unwrap();
    let l = log.clone();
    on_stream(s2, move || l.lock().push("s2"));
    s2.commit().unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(30),
        "stream.wait does not block the host"
    );
    assert!(!e.query().unwrap());
    s2.synchronize().unwrap();
    assert_eq!(*log.lock(), ["s1", "s2"]);
    assert!(e.query().unwrap());
    e.synchronize().unwrap();
    // Pooled: dropping and taking again creates nothing.
    drop(e);
    for _ in 0..100 {
        let mut e = events.event().unwrap();
        e.record(&s1).unwrap();
    }
    assert_eq!(events.created(), 1);
}

/// A pooled event is re-recorded on other streams while an earlier record may still be pending (the
/// allocator and callers drop events right after a `wait`). A wait must keep waiting for the record it
/// saw, however a later record on a faster stream completes. (The CI failure of the first runtime
/// commit: completion was a shared "highest generation done" counter.)
#[test]
fn a_wait_is_not_released_by_a_later_record_on_another_stream() {
    let pool = pool(3, ExhaustionPolicy::Error);
    let events = EventPool::new(pool.device().clone());
    let (slow, waiter, fast) = (
        pool.stream(1).unwrap(),
        pool.stream(2).unwrap(),
        pool.stream(3).unwrap(),
    );
    let (open_gate, gate) = crossbeam_channel::bounded::<()>(0);
    on_stream(slow, move || {
        let _ = gate.recv();
    });
    let mut e = events.event().unwrap();
    e.record(&slow).unwrap();
    waiter.wait(&e).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    on_stream(waiter, move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    waiter.commit().unwrap();
    // Re-record on an idle stream: this record completes at once.
    e.record(&fast).unwrap();
    e.synchronize().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "the wait was released by a later record"
    );
    open_gate.send(()).unwrap();
    waiter.synchronize().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn commit_policy_decides_when_the_device_starts() {
    let pool = pool(2, ExhaustionPolicy::Error);
    let stream = pool.stream(1).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let encode = |stream| {
        let ran = ran.clone();
        on_stream(stream, move || {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        stream.encoded().unwrap();
    };
    pool.set_commit_policy(CommitPolicy::Off);
    assert_eq!(pool.commit_policy(), CommitPolicy::Off);
    encode(stream);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "off: nothing runs before a sync point"
    );
    stream.synchronize().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);

    pool.set_commit_policy(CommitPolicy::On);
    encode(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ran.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        2,
        "on: work starts without a sync point"
    );
}

#[test]
fn policies_parse_from_strings_with_clear_errors() {
    assert_eq!(
        "wait:250".parse::<ExhaustionPolicy>().unwrap(),
        ExhaustionPolicy::Wait(Duration::from_millis(250))
    );
    assert_eq!(
        "share".parse::<ExhaustionPolicy>().unwrap(),
        ExhaustionPolicy::Share
    );
    assert_eq!(
        "error".parse::<ExhaustionPolicy>().unwrap().to_string(),
        "error"
    );
    for bad in ["wait:", "wait:abc", "queue"] {
        let err = bad.parse::<ExhaustionPolicy>().unwrap_err().to_string();
        assert!(
            err.contains("BRAID_STREAM_POOL_EXHAUSTED") && err.contains("wait:<milliseconds>"),
            "{err}"
        );
    }
}
