//! Embedding lookups: [`gather_rows_f32`] copies (or adds) table rows picked by id.
//!
//! Promise: an id past the table is a caller bug and panics ("invariant violated: ..."); nothing is
//! read out of bounds.

use super::{check_len, check_rows};

/// `out[i] = table[ids[i]]` (rows of length dim); when `accumulate`, `out[i] += table[ids[i]]` instead.
/// An id >= table rows is a caller bug (panic "invariant violated: ...").
/// Shapes: table is `[rows x dim]` (dim > 0), ids is `[n]`, out is `[n x dim]`.
pub fn gather_rows_f32(table: &[f32], ids: &[u32], dim: usize, out: &mut [f32], accumulate: bool) {
    check_rows("gather_rows: table", table.len(), dim);
    check_len("gather_rows: out", out.len(), ids.len() * dim);
    let rows = table.len() / dim;
    for (o, &id) in out.chunks_exact_mut(dim).zip(ids) {
        let id = id as usize;
        ensure!(
            id < rows,
            "gather_rows: id {id} out of range for a table of {rows} rows"
        );
        let src = &table[id * dim..(id + 1) * dim];
        if accumulate {
            o.iter_mut().zip(src).for_each(|(o, &s)| *o += s);
        } else {
            o.copy_from_slice(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::test_util::Rng;

    #[test]
    fn gather_rows_copy_and_accumulate() {
        let mut rng = Rng(41);
        let (rows, dim) = (6usize, 5usize);
        let table = rng.vec(rows * dim);
        let ids = [3u32, 0, 5, 3];
        let mut out = vec![f32::NAN; ids.len() * dim];
        gather_rows_f32(&table, &ids, dim, &mut out, false);
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(&out[i * dim..][..dim], &table[id as usize * dim..][..dim]);
        }
        let base = rng.vec(ids.len() * dim);
        let mut acc = base.clone();
        gather_rows_f32(&table, &ids, dim, &mut acc, true);
        for (i, v) in acc.iter().enumerate() {
            assert_eq!(*v, base[i] + table[ids[i / dim] as usize * dim + i % dim]);
        }
    }

    #[test]
    #[should_panic(expected = "invariant violated:")]
    fn gather_rows_out_of_range_panics() {
        let mut out = [0.0; 4];
        gather_rows_f32(&[0.0; 12], &[1, 6], 2, &mut out, false);
    }
}
