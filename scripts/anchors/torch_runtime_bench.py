#!/usr/bin/env python3
"""PyTorch anchor: the CUDA caching allocator and the stream pool of PyTorch, driven from C++ threads.

What braid's `cargo run --release -p braid-cuda --example alloc_throughput` (its caching allocator and
stream pool) is compared with. A small C++ extension, built at start with
torch.utils.cpp_extension.load_inline (no GIL in the timed loops), runs for 1, 2, 4, 8 and 16 threads:

- allocator: each thread takes its own pool stream (getStreamFromPool) and loops
  { raw_alloc_with_stream 8 blocks of 512 B .. 6 MiB (the size list rotated by one each iteration);
  raw_delete all 8 }; alloc and free each count as one op; 200,000 iterations in all, split over the
  threads (one thread: 200,000). Figure: ops/s over all threads.
- streams: each thread loops { getStreamFromPool(); setCurrentCUDAStream(s); getCurrentCUDAStream() }
  1,000,000 times. Figure: wall ns per iteration of one thread.

Every point is the median of REPS runs (default 5; min and max beside it). One row per thread count:
  threads, torch_alloc_ops_per_s, torch_stream_get_set_ns,
  and torch_alloc_ops_per_s_min/_max, torch_stream_get_set_ns_min/_max, reps.
Rows go to stdout as JSON lines and to $OUT/torch_runtime_bench.json (default: the current folder);
the device, driver and versions go to stderr first.

Usage (a GPU machine with torch, a C++ compiler and the CUDA headers; the first run compiles ~1 min):
    python3 scripts/anchors/torch_runtime_bench.py
    OUT=/tmp/figs REPS=7 python3 scripts/anchors/torch_runtime_bench.py
"""

import statistics

import torch
from torch.utils.cpp_extension import load_inline

from anchor_common import describe, emit, env_int, gpu_line

OUT_NAME = "torch_runtime_bench.json"
REPS = env_int("REPS", 5)
THREADS = (1, 2, 4, 8, 16)
ALLOC_ITERS = 200_000
STREAM_ITERS = 1_000_000

CPP = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
namespace alloc = c10::cuda::CUDACachingAllocator;

// Runs body(t) on `threads` threads after each has run prepare(t); returns the wall seconds from
// releasing them all at once until the last one finishes.
double run_threads(int threads, const std::function<void(int)>& prepare,
                   const std::function<void(int)>& body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      c10::cuda::CUDAGuard device(0);
      prepare(t);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      body(t);
    });
  }
  while (ready.load() < threads) {
  }
  const auto start = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr size_t kSizes[8] = {512, 4096, 65536, 262144, 1 << 20, 1572864, 3 << 20, 6291456};

}  // namespace

// alloc + free operations per second over all threads, each on its own pool stream.
double allocator_ops_per_s(int threads, int iters_per_thread) {
  std::vector<c10::cuda::CUDAStream> streams(threads, c10::cuda::getDefaultCUDAStream(0));
  auto prepare = [&](int t) {
    streams[t] = c10::cuda::getStreamFromPool(false, 0);
    c10::cuda::setCurrentCUDAStream(streams[t]);
    void* p[8];
    for (int j = 0; j < 8; ++j) p[j] = alloc::raw_alloc_with_stream(kSizes[j], streams[t]);
    for (int j = 0; j < 8; ++j) alloc::raw_delete(p[j]);
  };
  auto body = [&](int t) {
    void* p[8];
    for (int i = 0; i < iters_per_thread; ++i) {
      for (int j = 0; j < 8; ++j) p[j] = alloc::raw_alloc_with_stream(kSizes[(i + j) & 7], streams[t]);
      for (int j = 0; j < 8; ++j) alloc::raw_delete(p[j]);
    }
  };
  const double secs = run_threads(threads, prepare, body);
  return double(threads) * iters_per_thread * 16 / secs;
}

// Wall nanoseconds per { get a pool stream; make it current; read the current stream } of one thread.
double stream_get_set_ns(int threads, int iters) {
  std::atomic<long long> sink{0};
  auto prepare = [&](int) { (void)c10::cuda::getStreamFromPool(false, 0); };
  auto body = [&](int) {
    long long acc = 0;
    for (int i = 0; i < iters; ++i) {
      auto s = c10::cuda::getStreamFromPool(false, 0);
      c10::cuda::setCurrentCUDAStream(s);
      acc += static_cast<long long>(c10::cuda::getCurrentCUDAStream(0).id());
    }
    sink.fetch_add(acc);
  };
  const double secs = run_threads(threads, prepare, body);
  return secs * 1e9 / iters;
}
"""

DECLS = "double allocator_ops_per_s(int threads, int iters_per_thread); double stream_get_set_ns(int threads, int iters);"


def median_min_max(xs):
    return statistics.median(xs), min(xs), max(xs)


def main():
    describe(gpu_line(), f"{REPS} runs per point")
    ext = load_inline(
        "braid_anchor_runtime_bench",
        cpp_sources=[DECLS, CPP],
        functions=["allocator_ops_per_s", "stream_get_set_ns"],
        extra_cflags=["-O2"],
        with_cuda=True,
        verbose=False,
    )
    torch.cuda.init()
    torch.empty(1, device="cuda")  # the context and the allocator exist before the first timing
    rows = []
    for threads in THREADS:
        iters = ALLOC_ITERS // threads
        a = median_min_max([ext.allocator_ops_per_s(threads, iters) for _ in range(REPS)])
        s = median_min_max([ext.stream_get_set_ns(threads, STREAM_ITERS) for _ in range(REPS)])
        row = dict(
            threads=threads,
            torch_alloc_ops_per_s=round(a[0]),
            torch_stream_get_set_ns=round(s[0], 1),
            torch_alloc_ops_per_s_min=round(a[1]),
            torch_alloc_ops_per_s_max=round(a[2]),
            torch_stream_get_set_ns_min=round(s[1], 1),
            torch_stream_get_set_ns_max=round(s[2], 1),
            reps=REPS,
        )
        emit(rows, row, OUT_NAME)


if __name__ == "__main__":
    main()
