//! [`split_rows`]: runs a row-wise kernel over chunks of whole rows on several threads.
//!
//! The memory-bound kernels (bias + GELU, LayerNorm, the masked softmax) compute each row on its own,
//! so cutting a call into chunks of whole rows changes no bit of any result, whatever the thread count.
//! A stream alone on the machine (the engine's executor running one large batch) then uses every core
//! for them too, not only for its matrix products; sixteen busy streams get one thread each and run
//! them inline, as before.

/// Below this many elements per thread a chunk is not worth a rayon job.
const MIN_ELEMENTS_PER_TASK: usize = 1 << 15;

/// Calls `kernel(first_row, rows)` over `data` cut into at most `threads` chunks of whole rows of
/// `row_len` elements (the calling thread runs the first chunk, rayon workers the others, and the call
/// returns when all are done). `data.len()` must be a multiple of `row_len`.
pub fn split_rows(
    data: &mut [f32],
    row_len: usize,
    threads: usize,
    kernel: impl Fn(usize, &mut [f32]) + Sync,
) {
    super::check_rows("split_rows: data", data.len(), row_len);
    let rows = data.len() / row_len;
    let tasks = threads
        .min(data.len() / MIN_ELEMENTS_PER_TASK)
        .clamp(1, rows.max(1));
    if tasks <= 1 {
        kernel(0, data);
        return;
    }
    let rows_per_task = rows.div_ceil(tasks);
    let mut chunks = data.chunks_mut(rows_per_task * row_len).enumerate();
    let first = chunks.next();
    let kernel = &kernel;
    rayon::in_place_scope(|scope| {
        for (i, chunk) in chunks {
            scope.spawn(move |_| kernel(i * rows_per_task, chunk));
        }
        if let Some((_, chunk)) = first {
            kernel(0, chunk);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_visited_once_with_its_index_whatever_the_thread_count() {
        let row_len = 1000;
        for rows in [1usize, 7, 64, 333] {
            for threads in [1usize, 2, 3, 16] {
                let mut data = vec![0f32; rows * row_len];
                split_rows(&mut data, row_len, threads, |first, chunk| {
                    for (r, row) in chunk.chunks_exact_mut(row_len).enumerate() {
                        row.iter_mut().for_each(|v| *v += (first + r) as f32);
                    }
                });
                for (r, row) in data.chunks_exact(row_len).enumerate() {
                    assert!(
                        row.iter().all(|&v| v == r as f32),
                        "rows {rows} threads {threads}"
                    );
                }
            }
        }
    }
}
