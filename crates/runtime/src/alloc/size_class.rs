//! Size classes: how a requested size is rounded, and which pool serves it.
//!
//! Small requests (≤ [`SMALL_LIMIT`], 1 MiB) fall into [`SMALL_CLASSES`] classes: 256, 512, 768 and
//! 1024 bytes, then four classes per power of two (spacing ≤ 25%, as mimalloc's bins are spaced
//! ~12.5–25% apart), up to 1 MiB. Each small class has its own thread-cache list and its own shared pool.
//! Large requests are rounded up to one eighth of their power of two (≤ 12.5% waste) and served from the
//! large pool. Every rounded size is a multiple of [`crate::ALIGNMENT`].

/// The largest request served by the small pools and thread caches.
pub const SMALL_LIMIT: usize = 1 << 20;

/// Number of small size classes.
pub const SMALL_CLASSES: usize = 44;

/// Index of a small size class (`0..SMALL_CLASSES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SizeClass(pub(crate) u8);

impl SizeClass {
    /// The class of a request of `bytes` (≥ 1), or `None` when it is large.
    #[inline]
    pub(crate) fn of(bytes: usize) -> Option<Self> {
        let bytes = bytes.max(1);
        if bytes <= 1024 {
            return Some(Self((bytes.div_ceil(256) - 1) as u8));
        }
        if bytes > SMALL_LIMIT {
            return None;
        }
        let p = usize::BITS - 1 - (bytes - 1).leading_zeros(); // 2^p < bytes <= 2^(p+1), p >= 10
        let step = 1usize << (p - 2);
        let j = (bytes - (1 << p)).div_ceil(step); // 1..=4
        Some(Self((4 + (p as usize - 10) * 4 + (j - 1)) as u8))
    }

    /// The bytes every block of this class has.
    #[inline]
    pub(crate) fn size(self) -> usize {
        let i = self.0 as usize;
        if i < 4 {
            return (i + 1) * 256;
        }
        let p = (i - 4) / 4 + 10;
        let j = (i - 4) % 4 + 1;
        (1 << p) + j * (1 << (p - 2))
    }

    #[inline]
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// The rounded size of a large request (`bytes` > [`SMALL_LIMIT`]).
pub(crate) fn large_size(bytes: usize) -> usize {
    let p = usize::BITS - 1 - (bytes - 1).leading_zeros();
    let step = 1usize << (p - 3);
    bytes.div_ceil(step) * step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_small_sizes_tightly() {
        assert_eq!(SizeClass::of(0), Some(SizeClass(0)));
        assert_eq!(SizeClass::of(1).unwrap().size(), 256);
        assert_eq!(SizeClass::of(256).unwrap().size(), 256);
        assert_eq!(SizeClass::of(257).unwrap().size(), 512);
        assert_eq!(SizeClass::of(1025).unwrap().size(), 1280);
        assert_eq!(
            SizeClass::of(SMALL_LIMIT).unwrap().index(),
            SMALL_CLASSES - 1
        );
        assert_eq!(SizeClass::of(SMALL_LIMIT).unwrap().size(), SMALL_LIMIT);
        assert_eq!(SizeClass::of(SMALL_LIMIT + 1), None);
        let mut previous = 0;
        for bytes in (1..=SMALL_LIMIT).step_by(97).chain([SMALL_LIMIT]) {
            let class = SizeClass::of(bytes).unwrap();
            let size = class.size();
            assert!(size >= bytes && size % 256 == 0, "{bytes} -> {size}");
            assert!(
                bytes <= 1024 || size - bytes <= bytes / 4 + 1,
                "waste too high: {bytes} -> {size}"
            );
            assert!(class.index() >= previous);
            previous = class.index();
            assert_eq!(
                SizeClass::of(size),
                Some(class),
                "a class's size maps to itself"
            );
        }
    }

    #[test]
    fn large_sizes_round_to_an_eighth() {
        assert_eq!(large_size(SMALL_LIMIT + 1), SMALL_LIMIT + SMALL_LIMIT / 8);
        assert_eq!(large_size(64 << 20), 64 << 20);
        for bytes in [(1 << 20) + 1, 3 << 20, (5 << 20) + 12345, 100 << 20] {
            let size = large_size(bytes);
            assert!(
                size >= bytes && size - bytes <= bytes / 8 && size % 256 == 0,
                "{bytes} -> {size}"
            );
        }
    }
}
