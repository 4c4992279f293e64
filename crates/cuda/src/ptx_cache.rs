//! The on-disk cache of the PTX that NVRTC compiles from braid's kernel source, so a process start
//! reads a file instead of spending ~0.3 s in NVRTC.
//!
//! # What it owns
//!
//! One directory of `<key>.ptx` files and the temporary files it writes them through; nothing else in
//! braid writes there. The in-memory side (once per process and device) stays with `kernels`.
//!
//! # Promises
//!
//! - **The key** is the SHA-256 (a hash that no Rust release changes) of the cache format version, the
//!   source, the architecture (`sm_90`), the NVRTC version (`unknown` when libnvrtc cannot be asked)
//!   and braid's crate version, each length-prefixed so no two field lists collide. Any other NVRTC
//!   option a caller passes must be folded into the source or the architecture string.
//! - **An entry is returned only if it is whole.** A file is one header line
//!   `braid-ptx-cache 1 <key hex> <PTX length> <SHA-256 of the PTX, hex>` followed by the PTX. A file
//!   whose header does not parse, whose key is not the one asked for, whose length or checksum does
//!   not match, or whose PTX is not UTF-8 or holds a NUL byte is ignored: the source is compiled again
//!   and the file overwritten. A corrupt cache therefore costs a compile, never a wrong module.
//! - **Writes are atomic.** An entry is written to a fresh temporary file in the same directory (named
//!   from the process id, the thread id and a counter, created with `create_new`) and renamed over
//!   `<key>.ptx`, so a reader, in this process or another, sees either no file, an older whole file
//!   or the new whole file. There is no `fsync`: a crash may leave an empty or short file, which the
//!   checks above reject. Racing writers of one key write the same bytes, so the last rename wins
//!   harmlessly.
//! - **The cache never fails a compile.** A missing, unreadable or unwritable directory is logged
//!   (`tracing` debug for reads, warn for writes) and the freshly compiled PTX is returned; a compile
//!   error is returned as is and stores nothing.
//!
//! # Where it lives, and turning it off
//!
//! `$BRAID_CACHE_DIR/ptx` ([`CACHE_DIR_ENV`]; an empty value or `off` disables the disk cache), else
//! `$XDG_CACHE_HOME/braid/ptx` (an absolute path, as the XDG spec requires), else
//! `$HOME/.cache/braid/ptx`; with none of these, nothing is cached on disk. Entries are never evicted:
//! a new braid or NVRTC version writes new keys, and deleting the directory is always safe.
//!
//! Hand-written rather than a caching crate: it is one header line, a hash and a rename, and the
//! crates that do this bring eviction and async machinery braid does not need.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use braid_runtime::Result;
use sha2::{Digest, Sha256};

/// The environment variable that relocates braid's cache (the PTX goes in its `ptx` folder); an empty
/// value or `off` turns the disk cache off.
pub const CACHE_DIR_ENV: &str = "BRAID_CACHE_DIR";

/// The first word of every entry's header.
const MAGIC: &str = "braid-ptx-cache";
/// The entry format's version; part of the header and of the key, so a new format never reads an old file.
const FORMAT: &str = "1";
/// Files larger than this are not braid's PTX (ours is ~100 KiB) and are not read whole.
const MAX_ENTRY_BYTES: u64 = 64 << 20;

/// The PTX for `source` compiled for `arch` (e.g. `"sm_90"`), from the on-disk cache when a valid
/// entry exists, else from `compile()`, whose result is then stored (a store failure is logged, never
/// returned).
pub(crate) fn load_or_compile(
    source: &str,
    arch: &str,
    compile: impl FnOnce() -> Result<String>,
) -> Result<String> {
    let dir = cache_dir(|name| std::env::var_os(name));
    load_or_compile_in(dir.as_deref(), source, arch, nvrtc_version(), compile)
}

/// [`load_or_compile`] with the directory (`None`: no disk cache) and the NVRTC version given, so
/// tests need neither environment variables nor libnvrtc.
fn load_or_compile_in(
    dir: Option<&Path>,
    source: &str,
    arch: &str,
    nvrtc: &str,
    compile: impl FnOnce() -> Result<String>,
) -> Result<String> {
    let Some(dir) = dir else {
        return compile();
    };
    let key = cache_key(source, arch, nvrtc, env!("CARGO_PKG_VERSION"));
    let path = dir.join(format!("{key}.ptx"));
    match read_entry(&path, &key) {
        Ok(Some(ptx)) => {
            tracing::debug!(path = %path.display(), "PTX cache hit");
            return Ok(ptx);
        }
        Ok(None) => tracing::debug!(path = %path.display(), "PTX cache miss"),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "PTX cache entry unusable; compiling again");
        }
    }
    let ptx = compile()?;
    if ptx.as_bytes().contains(&0) {
        // The caller's `CString` conversion reports it; a cache must not keep it.
        tracing::warn!("NVRTC returned PTX with a NUL byte; not caching it");
    } else if let Err(e) = write_entry(dir, &path, &key, &ptx) {
        tracing::warn!(path = %path.display(), error = %e, "could not store compiled PTX in the cache");
    } else {
        tracing::debug!(path = %path.display(), "PTX cache stored");
    }
    Ok(ptx)
}

/// The cache directory from the environment (`get` reads one variable), or `None` for no disk cache.
fn cache_dir(get: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| get(name).filter(|v| !v.is_empty());
    if let Some(root) = get(CACHE_DIR_ENV) {
        if root.is_empty() || root == "off" {
            return None;
        }
        return Some(PathBuf::from(root).join("ptx"));
    }
    if let Some(xdg) = set("XDG_CACHE_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return Some(xdg.join("braid").join("ptx"));
        }
    }
    set("HOME").map(|home| PathBuf::from(home).join(".cache").join("braid").join("ptx"))
}

/// The version of the libnvrtc this process loads (`"12.8"`), or `"unknown"` if it cannot be loaded
/// or asked; read once.
fn nvrtc_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        use cudarc::nvrtc::sys;
        // SAFETY: this only tries to open libnvrtc by its candidate names and closes it again.
        if !unsafe { sys::is_culib_present() } {
            return "unknown".into();
        }
        // cudarc panics if the library or the symbol cannot be loaded; that only means "unknown".
        let asked = std::panic::catch_unwind(|| {
            let (mut major, mut minor) = (0, 0);
            // SAFETY: both pointers are to live, writable `c_int`s for the duration of the call.
            let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
            (status == sys::nvrtcResult::NVRTC_SUCCESS).then(|| format!("{major}.{minor}"))
        });
        asked.ok().flatten().unwrap_or_else(|| "unknown".into())
    })
}

/// The entry key: SHA-256 over the length-prefixed fields, as lowercase hex.
fn cache_key(source: &str, arch: &str, nvrtc: &str, braid: &str) -> String {
    let mut hash = Sha256::new();
    for field in [MAGIC, FORMAT, source, arch, nvrtc, braid] {
        hash.update((field.len() as u64).to_le_bytes());
        hash.update(field.as_bytes());
    }
    hex(&hash.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The header line (with its `\n`) of an entry holding `ptx` under `key`.
fn header(key: &str, ptx: &str) -> String {
    let sum = hex(&Sha256::digest(ptx.as_bytes()));
    format!("{MAGIC} {FORMAT} {key} {} {sum}\n", ptx.len())
}

/// The PTX stored at `path` under `key`: `Ok(None)` if there is no file, an error saying what is wrong
/// with one that is not a whole entry for `key`.
fn read_entry(path: &Path, key: &str) -> io::Result<Option<String>> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_BYTES + 1).read_to_end(&mut bytes)?;
    let invalid = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidData, why.to_owned()));
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return invalid("larger than any PTX entry");
    }
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return invalid("no header line");
    };
    let (head, body) = (&bytes[..newline], &bytes[newline + 1..]);
    let Ok(ptx) = std::str::from_utf8(body) else {
        return invalid("PTX is not UTF-8");
    };
    if ptx.contains('\0') {
        return invalid("PTX holds a NUL byte");
    }
    let mut expected = header(key, ptx);
    expected.pop(); // the '\n', which `head` does not include
    if head != expected.as_bytes() {
        return invalid("header does not match the key, the length or the checksum");
    }
    Ok(Some(ptx.to_owned()))
}

/// Writes `ptx` under `key` to `path` in `dir`: a fresh temporary file, then a rename over `path`.
fn write_entry(dir: &Path, path: &Path, key: &str, ptx: &str) -> io::Result<()> {
    // Only uniqueness matters, and `fetch_add` gives it under any ordering.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(dir)?;
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let tmp = dir.join(format!(
        ".{key}.{}.{thread}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(header(key, ptx).as_bytes())?;
            file.write_all(ptx.as_bytes())
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_runtime::RuntimeError;
    use std::cell::Cell;

    const SOURCE: &str = "extern \"C\" __global__ void k() {}";
    const PTX: &str =
        ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k() { ret; }\n";

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "braid-ptx-cache-test-{}-{name}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `load_or_compile_in` with a compile that returns `ptx` and counts its calls in `calls`.
    fn load(dir: &Path, source: &str, arch: &str, ptx: &str, calls: &Cell<u32>) -> String {
        load_or_compile_in(Some(dir), source, arch, "12.8", || {
            calls.set(calls.get() + 1);
            Ok(ptx.to_owned())
        })
        .unwrap()
    }

    fn entry_path(dir: &Path, source: &str, arch: &str) -> PathBuf {
        let key = cache_key(source, arch, "12.8", env!("CARGO_PKG_VERSION"));
        dir.join(format!("{key}.ptx"))
    }

    /// The names of the files in `dir`.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn first_call_compiles_and_stores_second_reads_without_compiling() {
        let tmp = TempDir::new("hit");
        let calls = Cell::new(0);
        assert_eq!(load(&tmp.0, SOURCE, "sm_90", PTX, &calls), PTX);
        assert_eq!(calls.get(), 1);
        let path = entry_path(&tmp.0, SOURCE, "sm_90");
        assert_eq!(files(&tmp.0), [path.file_name().unwrap().to_str().unwrap()]);
        let key = cache_key(SOURCE, "sm_90", "12.8", env!("CARGO_PKG_VERSION"));
        assert_eq!(read_entry(&path, &key).unwrap().as_deref(), Some(PTX));

        let again = load_or_compile_in(Some(&tmp.0), SOURCE, "sm_90", "12.8", || {
            panic!("compile must not run on a cache hit")
        })
        .unwrap();
        assert_eq!(again, PTX);
    }

    #[test]
    fn another_arch_source_or_nvrtc_version_compiles_again() {
        let tmp = TempDir::new("keys");
        let calls = Cell::new(0);
        load(&tmp.0, SOURCE, "sm_90", PTX, &calls);
        assert_eq!(
            load(&tmp.0, SOURCE, "sm_80", "sm80 ptx", &calls),
            "sm80 ptx"
        );
        assert_eq!(
            load(&tmp.0, "other source", "sm_90", "other ptx", &calls),
            "other ptx"
        );
        assert_eq!(calls.get(), 3);
        let newer = load_or_compile_in(Some(&tmp.0), SOURCE, "sm_90", "13.0", || Ok("new".into()));
        assert_eq!(newer.unwrap(), "new");
        assert_eq!(files(&tmp.0).len(), 4);
        // Each is now a hit, with its own PTX.
        assert_eq!(load(&tmp.0, SOURCE, "sm_90", "unused", &calls), PTX);
        assert_eq!(load(&tmp.0, SOURCE, "sm_80", "unused", &calls), "sm80 ptx");
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn nvrtc_version_is_major_minor_or_unknown_and_never_panics() {
        let v = nvrtc_version();
        let numeric = v.split_once('.').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
        assert!(v == "unknown" || numeric, "{v:?}");
    }

    #[test]
    fn key_fields_are_unambiguous() {
        assert_ne!(
            cache_key("ab", "c", "1", "2"),
            cache_key("a", "bc", "1", "2")
        );
        assert_ne!(cache_key("a", "b", "1", "2"), cache_key("a", "b", "1", "3"));
        assert_eq!(cache_key("a", "b", "1", "2"), cache_key("a", "b", "1", "2"));
        assert_eq!(cache_key("a", "b", "1", "2").len(), 64);
    }

    #[test]
    fn truncated_garbage_or_foreign_entries_are_recompiled_and_fixed() {
        let tmp = TempDir::new("corrupt");
        let path = entry_path(&tmp.0, SOURCE, "sm_90");
        let whole = {
            load(&tmp.0, SOURCE, "sm_90", PTX, &Cell::new(0));
            fs::read(&path).unwrap()
        };
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 0x01; // same length, wrong checksum
        let foreign = {
            // A whole entry, but for sm_80, renamed to sm_90's file name.
            load(&tmp.0, SOURCE, "sm_80", PTX, &Cell::new(0));
            fs::read(entry_path(&tmp.0, SOURCE, "sm_80")).unwrap()
        };
        let mut with_nul = header(
            &cache_key(SOURCE, "sm_90", "12.8", env!("CARGO_PKG_VERSION")),
            "a\0b",
        )
        .into_bytes();
        with_nul.extend_from_slice(b"a\0b");
        let cases: [(&str, Vec<u8>); 7] = [
            ("truncated", whole[..whole.len() / 2].to_vec()),
            (
                "header only",
                whole[..whole.iter().position(|&b| b == b'\n').unwrap()].to_vec(),
            ),
            ("empty", Vec::new()),
            (
                "garbage",
                (0..4096u32).map(|i| (i * 131 % 251) as u8).collect(),
            ),
            ("flipped byte", flipped),
            ("foreign", foreign),
            ("NUL in PTX", with_nul),
        ];
        for (what, bytes) in cases {
            fs::write(&path, &bytes).unwrap();
            let calls = Cell::new(0);
            assert_eq!(load(&tmp.0, SOURCE, "sm_90", PTX, &calls), PTX, "{what}");
            assert_eq!(calls.get(), 1, "{what}: a bad entry must be recompiled");
            assert_eq!(
                fs::read(&path).unwrap(),
                whole,
                "{what}: the entry must be rewritten"
            );
        }
    }

    #[test]
    fn unwritable_directory_still_returns_the_compiled_ptx() {
        let tmp = TempDir::new("unwritable");
        // A directory below a regular file can be neither created nor written, even by root.
        let blocker = tmp.0.join("file");
        fs::write(&blocker, b"not a directory").unwrap();
        let dir = blocker.join("ptx");
        let calls = Cell::new(0);
        assert_eq!(load(&dir, SOURCE, "sm_90", PTX, &calls), PTX);
        assert_eq!(load(&dir, SOURCE, "sm_90", PTX, &calls), PTX);
        assert_eq!(calls.get(), 2);
        assert_eq!(files(&tmp.0), ["file"]);
    }

    #[test]
    fn missing_directory_is_created() {
        let tmp = TempDir::new("create");
        let dir = tmp.0.join("a").join("b");
        load(&dir, SOURCE, "sm_90", PTX, &Cell::new(0));
        assert_eq!(files(&dir).len(), 1);
    }

    #[test]
    fn compile_error_propagates_and_stores_nothing() {
        let tmp = TempDir::new("error");
        let result = load_or_compile_in(Some(&tmp.0), SOURCE, "sm_90", "12.8", || {
            Err(RuntimeError::Device("NVRTC could not compile".into()))
        });
        assert!(matches!(result, Err(RuntimeError::Device(m)) if m == "NVRTC could not compile"));
        assert!(files(&tmp.0).is_empty());
    }

    #[test]
    fn ptx_with_nul_is_returned_but_not_stored() {
        let tmp = TempDir::new("nul");
        let calls = Cell::new(0);
        assert_eq!(load(&tmp.0, SOURCE, "sm_90", "a\0b", &calls), "a\0b");
        assert!(files(&tmp.0).is_empty());
    }

    #[test]
    fn no_disk_cache_always_compiles() {
        let calls = Cell::new(0);
        for _ in 0..2 {
            let ptx = load_or_compile_in(None, SOURCE, "sm_90", "12.8", || {
                calls.set(calls.get() + 1);
                Ok(PTX.into())
            });
            assert_eq!(ptx.unwrap(), PTX);
        }
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn racing_threads_get_the_same_ptx_and_leave_a_valid_entry() {
        let tmp = TempDir::new("race");
        let barrier = std::sync::Barrier::new(8);
        let results: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        load(&tmp.0, SOURCE, "sm_90", PTX, &Cell::new(0))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| r == PTX));
        let path = entry_path(&tmp.0, SOURCE, "sm_90");
        let key = cache_key(SOURCE, "sm_90", "12.8", env!("CARGO_PKG_VERSION"));
        assert_eq!(read_entry(&path, &key).unwrap().as_deref(), Some(PTX));
        // No temporary file is left behind.
        assert_eq!(files(&tmp.0), [path.file_name().unwrap().to_str().unwrap()]);
    }

    #[test]
    fn directory_comes_from_braid_then_xdg_then_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all: &[_] = &[
            (CACHE_DIR_ENV, "/b"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_dir(env(all)), Some(PathBuf::from("/b/ptx")));
        assert_eq!(
            cache_dir(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/braid/ptx"))
        );
        assert_eq!(
            cache_dir(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/braid/ptx"))
        );
        // An empty or relative XDG_CACHE_HOME is ignored, as the XDG spec says.
        assert_eq!(
            cache_dir(env(&[("XDG_CACHE_HOME", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/braid/ptx"))
        );
        assert_eq!(
            cache_dir(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/braid/ptx"))
        );
        // Empty or "off" disables the disk cache, whatever else is set.
        assert_eq!(
            cache_dir(env(&[(CACHE_DIR_ENV, "off"), ("HOME", "/h")])),
            None
        );
        assert_eq!(cache_dir(env(&[(CACHE_DIR_ENV, ""), ("HOME", "/h")])), None);
        assert_eq!(cache_dir(env(&[("HOME", "")])), None);
        assert_eq!(cache_dir(env(&[])), None);
    }
}
