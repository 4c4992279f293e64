//! Size classes: how a requested size is rounded, and which pool and cache list serve it.
//!
//! Small requests (≤ [`SMALL_LIMIT`], 1 MiB) fall into [`SMALL_CLASSES`] classes: 256, 512, 768 and
//! 1024 bytes, then four classes per power of two (spacing ≤ 25%, as mimalloc's bins are spaced
//! ~12.5–25% apart), up to 1 MiB. Large requests are rounded up to one eighth of their power of two
//! (≤ 12.5% waste), which makes eight large classes per power of two, from 1.125 MiB up to
//! [`MAX_CLASS_SIZE`]. Every class, small or large, has its own shared pool and lock; the small
//! classes and the large ones up to the thread cache's limit also have a thread-cache list (see
//! [`super::thread_cache`]). Class indices run small first, then large, in order of size, so "the
//! next class up" is `index + 1` across the boundary too. Every rounded size is a multiple of
//! [`crate::device::ALIGNMENT`].

/// The largest request served by the small pools and thread caches.
pub const SMALL_LIMIT: usize = 1 << 20;

/// Number of small size classes.
pub const SMALL_CLASSES: usize = 44;

/// Powers of two covered by the large classes: 2^20 < size ≤ 2^21 up to 2^61 < size ≤ 2^62.
const LARGE_OCTAVES: usize = 42;

/// Number of size classes, small and large.
pub(crate) const CLASSES: usize = SMALL_CLASSES + 8 * LARGE_OCTAVES;

/// The largest request any class serves (4 EiB, far past any device); larger requests fail at once.
pub(crate) const MAX_CLASS_SIZE: usize = 1 << (20 + LARGE_OCTAVES);

/// Index of a size class (`0..CLASSES`; small ones first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SizeClass(pub(crate) u16);

impl SizeClass {
    /// The class of a request of `bytes` (0 counts as 1), or `None` past [`MAX_CLASS_SIZE`].
    #[inline]
    pub(crate) fn of(bytes: usize) -> Option<Self> {
        let bytes = bytes.max(1);
        if bytes <= 1024 {
            return Some(Self((bytes.div_ceil(256) - 1) as u16));
        }
        if bytes > SMALL_LIMIT {
            return Self::of_large(bytes);
        }
        let p = usize::BITS - 1 - (bytes - 1).leading_zeros(); // 2^p < bytes <= 2^(p+1), p >= 10
        let step = 1usize << (p - 2);
        let j = (bytes - (1 << p)).div_ceil(step); // 1..=4
        Some(Self((4 + (p as usize - 10) * 4 + (j - 1)) as u16))
    }

    #[cold]
    fn of_large(bytes: usize) -> Option<Self> {
        if bytes > MAX_CLASS_SIZE {
            return None;
        }
        let p = usize::BITS - 1 - (bytes - 1).leading_zeros(); // 2^p < bytes <= 2^(p+1), p >= 20
        let step = 1usize << (p - 3);
        let k = (bytes - (1 << p)).div_ceil(step); // 1..=8
        Some(Self(
            (SMALL_CLASSES + (p as usize - 20) * 8 + (k - 1)) as u16,
        ))
    }

    /// The bytes every block of this class has.
    #[inline]
    pub(crate) fn size(self) -> usize {
        let i = self.0 as usize;
        if i < 4 {
            return (i + 1) * 256;
        }
        if i >= SMALL_CLASSES {
            let i = i - SMALL_CLASSES;
            let p = i / 8 + 20;
            return (1 << p) + (i % 8 + 1) * (1 << (p - 3));
        }
        let p = (i - 4) / 4 + 10;
        let j = (i - 4) % 4 + 1;
        (1 << p) + j * (1 << (p - 2))
    }

    /// Whether the class is small (≤ [`SMALL_LIMIT`]).
    #[inline]
    pub(crate) fn is_small(self) -> bool {
        (self.0 as usize) < SMALL_CLASSES
    }

    #[inline]
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
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
        assert!(!SizeClass::of(SMALL_LIMIT + 1).unwrap().is_small());
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
    fn large_classes_round_to_an_eighth() {
        let first = SizeClass::of(SMALL_LIMIT + 1).unwrap();
        assert_eq!(first.index(), SMALL_CLASSES);
        assert_eq!(first.size(), SMALL_LIMIT + SMALL_LIMIT / 8);
        assert_eq!(SizeClass::of(64 << 20).unwrap().size(), 64 << 20);
        for bytes in [(1 << 20) + 1, 3 << 20, (5 << 20) + 12345, 100 << 20] {
            let size = SizeClass::of(bytes).unwrap().size();
            assert!(
                size >= bytes && size - bytes <= bytes / 8 && size % 256 == 0,
                "{bytes} -> {size}"
            );
        }
        let last = SizeClass::of(MAX_CLASS_SIZE).unwrap();
        assert_eq!((last.index(), last.size()), (CLASSES - 1, MAX_CLASS_SIZE));
        assert_eq!(SizeClass::of(MAX_CLASS_SIZE + 1), None);
        assert_eq!(SizeClass::of(usize::MAX), None);
        for i in SMALL_CLASSES..CLASSES {
            let class = SizeClass(i as u16);
            assert_eq!(SizeClass::of(class.size()), Some(class), "class {i}");
            assert!(class.size() > SizeClass(i as u16 - 1).size(), "class {i}");
            // The next two classes up are at most a quarter larger (the large reuse slack).
            if i + 2 < CLASSES {
                assert!(SizeClass(i as u16 + 2).size() <= class.size() + class.size() / 4);
            }
        }
    }
}
