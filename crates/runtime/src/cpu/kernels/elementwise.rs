//! Element-wise kernels: [`add_f32`].
//!
//! Promise: a length mismatch is a caller bug and panics ("invariant violated: ...").

use super::check_len;

/// `x[i] += y[i]`.
/// Shapes: x and y have the same length.
pub fn add_f32(x: &mut [f32], y: &[f32]) {
    check_len("add: y", y.len(), x.len());
    x.iter_mut().zip(y).for_each(|(a, &b)| *a += b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_adds() {
        let mut x = vec![1.0, 2.0, 3.0];
        add_f32(&mut x, &[0.5, -2.0, 4.0]);
        assert_eq!(x, [1.5, 0.0, 7.0]);
    }

    #[test]
    #[should_panic(expected = "invariant violated:")]
    fn add_length_mismatch_panics() {
        add_f32(&mut [0.0; 3], &[0.0; 2]);
    }
}
