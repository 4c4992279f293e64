//! Graph pools on the CPU backend (which cannot capture): routing keeps a pool's blocks private,
//! a capturing route never allocates, dropping a pool returns the allocator's figures to where they
//! were, and capture is refused with a clear error. The CUDA half (capture, replay) is
//! `crates/cuda/tests/cuda_graphs.rs`.

mod common;

use std::collections::HashSet;

use braid_runtime::cpu::CpuDevice;
use braid_runtime::{Buffer, Runtime, RuntimeConfig, StreamPoolConfig};
use common::{addr_of, cpu_runtime};

/// Sizes the tests allocate: small, large (thread-cached), and past the thread cache's block limit.
const SIZES: [usize; 5] = [1000, 5000, 200_000, 3 << 20, 9 << 20];

fn runtime() -> Runtime<CpuDevice> {
    cpu_runtime(RuntimeConfig {
        streams: StreamPoolConfig {
            worker_slots: 4,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// `SIZES`, each `n` times.
fn allocate(rt: &Runtime<CpuDevice>, n: usize) -> Vec<Buffer<CpuDevice>> {
    (0..n)
        .flat_map(|_| SIZES)
        .map(|bytes| rt.alloc(bytes).unwrap())
        .collect()
}

#[test]
fn a_pools_blocks_are_never_handed_to_anyone_else() {
    let rt = runtime();
    let streams = rt.streams();
    let _on_1 = streams
        .set_current_stream(streams.stream(1).unwrap())
        .unwrap();
    let pool = rt.graph_pool().unwrap();
    // Routed: some buffers kept (a graph's inputs and outputs), the rest freed into the pool.
    let (kept, private) = rt
        .with_pool(&pool, || {
            let kept = allocate(&rt, 1);
            let freed = allocate(&rt, 2);
            let private: HashSet<usize> = kept.iter().chain(&freed).map(addr_of).collect();
            Ok((kept, private))
        })
        .unwrap();
    assert_eq!(
        pool.free_blocks(),
        2 * SIZES.len(),
        "freed while routed: kept by the pool"
    );
    assert_eq!(private.len(), 3 * SIZES.len());

    // Not routed any more: the same thread and stream get other blocks, again and again.
    for _ in 0..3 {
        let again = allocate(&rt, 2);
        assert!(
            again.iter().all(|b| !private.contains(&addr_of(b))),
            "same stream"
        );
    }
    // Another thread on another stream, after this thread's caches were flushed.
    rt.allocator().empty_cache().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _on_2 = streams
                .set_current_stream(streams.stream(2).unwrap())
                .unwrap();
            for _ in 0..3 {
                let other = allocate(&rt, 3);
                assert!(
                    other.iter().all(|b| !private.contains(&addr_of(b))),
                    "another stream got a graph's block"
                );
            }
        });
    });
    // Routed again: the pool serves the same requests from its own blocks, with no new memory.
    let raw_before = rt.allocator().stats().raw_allocs;
    rt.with_pool(&pool, || {
        let reused = allocate(&rt, 2);
        assert!(reused.iter().all(|b| private.contains(&addr_of(b))));
        Ok(())
    })
    .unwrap();
    assert_eq!(rt.allocator().stats().raw_allocs, raw_before);
    drop(kept);
}

#[test]
fn dropping_a_pool_and_its_graphs_tensors_returns_the_allocated_bytes() {
    let rt = runtime();
    let baseline = rt.allocator().stats().allocated_bytes;
    let pool = rt.graph_pool().unwrap();
    let before_route = allocate(&rt, 1);
    let kept = rt
        .with_pool(&pool, || {
            // A block allocated before the route and freed during it joins the pool too.
            drop(before_route);
            let kept = allocate(&rt, 1);
            drop(allocate(&rt, 2));
            Ok(kept)
        })
        .unwrap();
    assert!(rt.allocator().stats().allocated_bytes > baseline);
    drop(kept);
    assert!(
        rt.allocator().stats().allocated_bytes > baseline,
        "the pool's blocks count as allocated"
    );
    drop(pool);
    assert_eq!(rt.allocator().stats().allocated_bytes, baseline);
    // The freed blocks serve ordinary allocations now.
    let raw_before = rt.allocator().stats().raw_allocs;
    drop(allocate(&rt, 2));
    assert_eq!(rt.allocator().stats().raw_allocs, raw_before);
}

#[test]
fn a_capturing_route_never_allocates_memory() {
    let rt = runtime();
    let pool = rt.graph_pool().unwrap();
    {
        let _capturing = pool.route(true).unwrap();
        let error = rt.alloc(4096).unwrap_err().to_string();
        assert!(error.contains("did not hold"), "{error}");
    }
    // Warmed with the same requests, a capturing route finds every block.
    rt.with_pool(&pool, || {
        drop(allocate(&rt, 2));
        Ok(())
    })
    .unwrap();
    let _capturing = pool.route(true).unwrap();
    drop(allocate(&rt, 2));
}

#[test]
fn one_route_per_thread_and_only_on_the_pools_stream() {
    let rt = runtime();
    let streams = rt.streams();
    let _on_1 = streams
        .set_current_stream(streams.stream(1).unwrap())
        .unwrap();
    let pool = rt.graph_pool().unwrap();
    let _route = pool.route(false).unwrap();
    assert!(pool.route(false).is_err());
    drop(_route);
    let _on_2 = streams
        .set_current_stream(streams.stream(2).unwrap())
        .unwrap();
    let error = rt.with_pool(&pool, || Ok(())).unwrap_err().to_string();
    assert!(error.contains("the stream the graph"), "{error}");
}

#[test]
fn the_cpu_backend_says_it_cannot_capture() {
    let rt = runtime();
    assert!(!rt.supports_graphs());
    let pool = rt.graph_pool().unwrap();
    let error = rt.capture(&pool, || Ok(())).unwrap_err().to_string();
    assert!(error.contains("cannot capture"), "{error}");
    let capture = rt
        .streams()
        .capture_stream(rt.current_stream().unwrap())
        .unwrap();
    assert!(
        rt.streams().capture_stream(capture).is_err(),
        "a capture stream has no partner"
    );
}
