//! Does the kernel's `PAGEMAP_SCAN` tell exactly which pages were written?
//!
//! The pool keeps released memory resident and resets it in place
//! (`--pool-keep-resident`). wasmtime can ask `PAGEMAP_SCAN` (Linux 6.7+)
//! which pages an instance wrote and zero only those. Some kernels answer
//! that every page of an anonymous mapping was written, touched or not. There
//! the scan only adds its own cost to the zeroing of the whole kept memory,
//! so the pool is told not to scan. One probe at start, on 8 pages of its
//! own: write one, read one, ask.

use std::sync::OnceLock;

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The kernel named exactly the page that was written.
    Exact,
    /// The kernel named another number of pages than the 1 written (most
    /// often pages nobody wrote).
    Inexact(u64),
    /// No `PAGEMAP_SCAN` here (older kernel, not Linux, or the call failed).
    Missing,
}

impl std::fmt::Display for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scan::Exact => f.write_str("exact"),
            Scan::Inexact(n) => write!(f, "inexact ({n} of 8 pages reported written, 1 was)"),
            Scan::Missing => f.write_str("missing"),
        }
    }
}

/// The probe's answer, computed once per process.
pub fn scan() -> Scan {
    static ANSWER: OnceLock<Scan> = OnceLock::new();
    *ANSWER.get_or_init(probe)
}

#[cfg(not(target_os = "linux"))]
fn probe() -> Scan {
    Scan::Missing
}

#[cfg(target_os = "linux")]
fn probe() -> Scan {
    use std::os::fd::AsRawFd;

    // Page categories and the request layout of <linux/fs.h>.
    const PAGE_IS_WRITTEN: u64 = 1 << 1;
    const PAGE_IS_FILE: u64 = 1 << 2;
    const PAGE_IS_PFNZERO: u64 = 1 << 5;
    #[repr(C)]
    struct ScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Region {
        start: u64,
        end: u64,
        categories: u64,
    }
    // _IOWR('f', 16, struct pm_scan_arg)
    const PAGEMAP_SCAN: u64 =
        (3 << 30) | ((std::mem::size_of::<ScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;
    const PAGES: usize = 8;

    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return Scan::Missing;
    };
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return Scan::Missing,
    };
    let len = PAGES * page;
    // SAFETY: a fresh private anonymous mapping that nothing else refers to;
    // it is unmapped below before the function returns.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Scan::Missing;
    }
    let base = base.cast::<u8>();
    // SAFETY: both offsets lie inside the mapping made above, which is
    // readable and writable.
    unsafe {
        base.add(page).write_volatile(1);
        let _ = base.add(3 * page).read_volatile();
    }
    let mut regions = [Region::default(); PAGES];
    let mut arg = ScanArg {
        size: std::mem::size_of::<ScanArg>() as u64,
        flags: 0,
        start: base as u64,
        end: base as u64 + len as u64,
        walk_end: 0,
        vec: regions.as_mut_ptr() as u64,
        vec_len: PAGES as u64,
        max_pages: 0,
        // Written pages that are neither the shared zero page nor file
        // backed: the question wasmtime asks.
        category_inverted: PAGE_IS_PFNZERO | PAGE_IS_FILE,
        category_mask: PAGE_IS_WRITTEN | PAGE_IS_PFNZERO | PAGE_IS_FILE,
        category_anyof_mask: 0,
        return_mask: 0,
    };
    // SAFETY: `arg` is a valid pm_scan_arg describing the mapping above and
    // an output buffer of `vec_len` regions that outlives the call.
    let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    let written: u64 = match usize::try_from(found) {
        Ok(n) => regions[..n.min(PAGES)]
            .iter()
            .map(|r| r.end.saturating_sub(r.start) / page as u64)
            .sum(),
        Err(_) => u64::MAX,
    };
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base.cast(), len) };
    match written {
        u64::MAX => Scan::Missing,
        1 => Scan::Exact,
        n => Scan::Inexact(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_answers_and_agrees_with_itself() {
        let first = scan();
        assert_eq!(first, probe());
        if let Scan::Inexact(n) = first {
            assert!(n != 1 && n <= 8, "{first}");
        }
    }
}
