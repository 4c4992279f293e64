//! Scalar transcendental functions in f32, written to inline into vectorised loops: `exp_f32`,
//! `erfc_nonneg` and `erf_small`.
//!
//! Promises: each is branch-free apart from selects (so a loop over it vectorises), uses only IEEE
//! add/sub/mul/div (no FMA, so every SIMD build gives the same bits), and states its accuracy in its
//! doc; the unit tests below check those bounds against f64 references.

/// e^x in f32 (Cephes `expf` polynomial, ~2 ulp), branch-free so loops vectorise.
/// Saturates at e^88 for larger x; returns 0 for x < -87 (below the normal range).
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let z = xc * std::f32::consts::LOG2_E + MAGIC;
    let nf = z - MAGIC;
    let r = xc - nf * 0.693_359_4 - nf * -2.121_944_4e-4;
    // Estrin's scheme (shorter dependency chains than Horner).
    let r2 = r * r;
    let p01 = 0.5 + 0.166_666_65 * r;
    let p23 = 4.166_579_6e-2 + 8.333_452e-3 * r;
    let p45 = 1.398_199_9e-3 + 1.987_569_1e-4 * r;
    let p = p01 + (p23 + p45 * r2) * r2;
    let y = p * r2 + r + 1.0;
    // The low mantissa bits of z hold n = round(x * log2 e) in [-126, 127]; build 2^n.
    let scale = f32::from_bits(z.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// erfc(z) for z >= 0, relative error below ~2e-7 (Numerical Recipes `erfcc`).
#[inline(always)]
pub(super) fn erfc_nonneg(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    // Degree-9 polynomial in t by Estrin's scheme (shorter dependency chains than Horner).
    let (t2, zz) = (t * t, z * z);
    let t4 = t2 * t2;
    let q01 = -1.265_512_2 + 1.000_023_7 * t;
    let q23 = 0.374_091_96 + 0.096_784_18 * t;
    let q45 = -0.186_288_06 + 0.278_868_07 * t;
    let q67 = -1.135_204 + 1.488_515_9 * t;
    let q89 = -0.822_152_2 + 0.170_872_77 * t;
    let p = (q01 + q23 * t2) + (q45 + q67 * t2) * t4 + q89 * (t4 * t4);
    t * exp_f32(p - zz)
}

/// erf(z) for |z| <= 0.5 by its Maclaurin series (truncation error < 1e-9),
/// which keeps full accuracy where `1 - erfc(z)` would cancel.
#[inline(always)]
pub(super) fn erf_small(z: f32) -> f32 {
    let z2 = z * z;
    let p = 1.205_533_3e-4_f32;
    let p = p * z2 - 8.548_327e-4;
    let p = p * z2 + 5.223_977_6e-3;
    let p = p * z2 - 2.686_617e-2;
    let p = p * z2 + 0.112_837_92;
    let p = p * z2 - 0.376_126_4;
    let p = p * z2 + std::f32::consts::FRAC_2_SQRT_PI;
    z * p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::test_util::erf_ref;

    /// erf(x) in f32; max abs error vs f64 erf ~1.3e-7.
    fn erf_f32(x: f32) -> f32 {
        let e = 1.0 - erfc_nonneg(x.abs());
        if x.abs() < 0.5 {
            erf_small(x)
        } else if x < 0.0 {
            -e
        } else {
            e
        }
    }

    #[test]
    fn erf_is_accurate() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f32 * 1e-3;
            worst = worst.max((erf_f32(x) as f64 - erf_ref(x as f64)).abs());
        }
        println!("max |erf_f32 - erf| over [-6, 6] = {worst:e}");
        assert!(worst < 2e-7, "max |erf error| = {worst:e}");
    }

    #[test]
    fn exp_matches_std() {
        for i in -8700..=8800 {
            let x = i as f32 * 1e-2;
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    }
}
