//! Does the kernel's `PAGEMAP_SCAN` tell exactly which pages were written?
//!
//! The pool keeps released memory resident and resets it in place
//! (`--pool-keep-resident`). wasmtime can ask `PAGEMAP_SCAN` (Linux 6.7+)
//! which pages an instance wrote and zero only those. Some kernels answer
//! that every page of an anonymous mapping was written, touched or not
//! (what "written" means there is "not write-protected by a userfaultfd").
//! There Gantry tracks writes itself ([`WriteTracker`]): the pool's memory is
//! registered with a userfaultfd and write-protected before first use, and
//! the scan becomes exact for it. Where neither works, the pool is told not
//! to scan and zeroes the whole kept memory. Two probes at start, on 8 pages
//! of their own: write one, read one, ask (once plain, once tracked).

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
    *ANSWER.get_or_init(|| probe(false))
}

/// The same probe on pages registered for write tracking
/// ([`WriteTracker`]) and write-protected before they are touched: what the
/// pool's memory answers once Gantry tracks it.
pub fn tracked_scan() -> Scan {
    static ANSWER: OnceLock<Scan> = OnceLock::new();
    *ANSWER.get_or_init(|| probe(true))
}

#[cfg(not(target_os = "linux"))]
fn probe(_tracked: bool) -> Scan {
    Scan::Missing
}

/// Pages of `[start, start + len)` that `PAGEMAP_SCAN` reports written and
/// neither the shared zero page nor file backed: the question wasmtime
/// asks. `None` where the call fails.
#[cfg(target_os = "linux")]
fn written_pages(pagemap: &std::fs::File, start: usize, len: usize) -> Option<u64> {
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
    const REGIONS: usize = 64;

    let mut regions = [Region::default(); REGIONS];
    let mut arg = ScanArg {
        size: std::mem::size_of::<ScanArg>() as u64,
        flags: 0,
        start: start as u64,
        end: (start + len) as u64,
        walk_end: 0,
        vec: regions.as_mut_ptr() as u64,
        vec_len: REGIONS as u64,
        max_pages: 0,
        category_inverted: PAGE_IS_PFNZERO | PAGE_IS_FILE,
        category_mask: PAGE_IS_WRITTEN | PAGE_IS_PFNZERO | PAGE_IS_FILE,
        category_anyof_mask: 0,
        return_mask: 0,
    };
    // SAFETY: `arg` is a valid pm_scan_arg describing the caller's range and
    // an output buffer of `vec_len` regions that outlives the call; the scan
    // only reads page tables.
    let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    let n = usize::try_from(found).ok()?;
    let page = page_size() as u64;
    Some(
        regions[..n.min(REGIONS)]
            .iter()
            .map(|r| r.end.saturating_sub(r.start) / page)
            .sum(),
    )
}

#[cfg(target_os = "linux")]
fn probe(tracked: bool) -> Scan {
    const PAGES: usize = 8;
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return Scan::Missing;
    };
    let page = page_size();
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
    // Tracked: registered and write-protected while nothing is written yet,
    // as the pool is.
    let tracker = if tracked {
        match WriteTracker::register(base as usize, len)
            .and_then(|t| t.protect(base as usize, len).map(|()| t))
        {
            Ok(t) => Some(t),
            Err(_) => {
                // SAFETY: the mapping made above, no longer used.
                unsafe { libc::munmap(base.cast(), len) };
                return Scan::Missing;
            }
        }
    } else {
        None
    };
    // SAFETY: both offsets lie inside the mapping made above, which is
    // readable and writable.
    unsafe {
        base.add(page).write_volatile(1);
        let _ = base.add(3 * page).read_volatile();
    }
    let written = written_pages(&pagemap, base as usize, len);
    drop(tracker);
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base.cast(), len) };
    match written {
        None => Scan::Missing,
        Some(1) => Scan::Exact,
        Some(n) => Scan::Inexact(n),
    }
}

/// The host's page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    }
}

/// Write tracking for memory where the kernel alone does not say which pages
/// were written: a userfaultfd with asynchronous write protection (Linux
/// 6.7+). A page that is write-protected while it still holds zeros reads
/// as not written in `PAGEMAP_SCAN` until something writes to it; the write
/// itself lifts the protection (in the fault, before the write lands, with
/// no handler thread) and from then on the page reads as written. Nothing
/// ever protects a page again, so a page that reads as unwritten still holds
/// the zeros it was protected with.
///
/// Memory stays registered while the tracker lives: dropping it ends the
/// tracking, and every page then reads as written again (safe, only slower).
pub struct WriteTracker {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

#[cfg(target_os = "linux")]
mod uffd {
    // <linux/userfaultfd.h>
    pub const API: u64 = 0xAA;
    pub const USER_MODE_ONLY: libc::c_int = 1;
    pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
    pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
    pub const REGISTER_MODE_WP: u64 = 1 << 1;
    pub const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    #[repr(C)]
    pub struct Api {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }
    #[repr(C)]
    pub struct Range {
        pub start: u64,
        pub len: u64,
    }
    #[repr(C)]
    pub struct Register {
        pub range: Range,
        pub mode: u64,
        pub ioctls: u64,
    }
    #[repr(C)]
    pub struct WriteProtect {
        pub range: Range,
        pub mode: u64,
    }
    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
    }
    pub const IOCTL_API: u64 = iowr(0x3F, std::mem::size_of::<Api>());
    pub const IOCTL_REGISTER: u64 = iowr(0x00, std::mem::size_of::<Register>());
    pub const IOCTL_WRITEPROTECT: u64 = iowr(0x06, std::mem::size_of::<WriteProtect>());
}

impl WriteTracker {
    /// Registers `[start, start + len)` for write tracking. The range must be
    /// whole private anonymous mappings (any protection).
    #[cfg(target_os = "linux")]
    pub fn register(start: usize, len: usize) -> std::io::Result<WriteTracker> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: userfaultfd takes flags only; user-mode-only needs no
        // privilege (Linux 5.11+).
        let raw = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::USER_MODE_ONLY,
            )
        };
        let raw = i32::try_from(raw).map_err(|_| std::io::Error::other("bad descriptor"))?;
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut api = uffd::Api {
            api: uffd::API,
            features: uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        // SAFETY: a valid uffdio_api for this descriptor.
        if unsafe { libc::ioctl(fd.as_raw_fd(), uffd::IOCTL_API as _, &mut api) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut reg = uffd::Register {
            range: uffd::Range {
                start: start as u64,
                len: len as u64,
            },
            mode: uffd::REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: a valid uffdio_register; registering changes no contents.
        if unsafe { libc::ioctl(fd.as_raw_fd(), uffd::IOCTL_REGISTER as _, &mut reg) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(WriteTracker { fd })
    }

    /// Write-protects `[start, start + len)`, which must be registered and
    /// hold only zeros (untouched memory). Page tables for the range are
    /// allocated now (one page per 2 MiB on x86-64).
    #[cfg(target_os = "linux")]
    pub fn protect(&self, start: usize, len: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut wp = uffd::WriteProtect {
            range: uffd::Range {
                start: start as u64,
                len: len as u64,
            },
            mode: uffd::WRITEPROTECT_MODE_WP,
        };
        // SAFETY: a valid uffdio_writeprotect; protection is lifted by the
        // kernel itself on the next write (asynchronous mode).
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), uffd::IOCTL_WRITEPROTECT as _, &mut wp) } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    pub fn register(_start: usize, _len: usize) -> std::io::Result<WriteTracker> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    #[cfg(not(target_os = "linux"))]
    pub fn protect(&self, _start: usize, _len: usize) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// One line of `/proc/self/maps`: its range, and whether it is an
/// inaccessible anonymous reservation (`---p`, no file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    pub reserved: bool,
}

/// This process's mappings, in address order (`/proc/self/maps`).
pub fn mappings() -> Vec<Mapping> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    parse_maps(&maps)
}

fn parse_maps(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms, _offset, _dev, inode) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (a, b) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(a, 16).ok()?,
                end: usize::from_str_radix(b, 16).ok()?,
                reserved: perms == "---p" && inode == "0" && f.next().is_none(),
            })
        })
        .collect()
}

/// Start addresses of the inaccessible anonymous reservations of exactly
/// `len` bytes that are new since `before` was read: how the memory pool's
/// slab is found right after the engine reserves it.
///
/// The kernel joins a new reservation to an adjacent one with the same
/// flags into one line of the maps (another engine's slab, a thread stack's
/// guard, an allocator's reserve), so a reservation is not looked for as a
/// line of its own: each reserved range now is cut down to the parts no
/// mapping covered before, and those of exactly `len` bytes are new
/// reservations.
pub fn new_reservations(before: &[Mapping], now: &[Mapping], len: usize) -> Vec<usize> {
    let mut found = Vec::new();
    for m in now.iter().filter(|m| m.reserved) {
        // The parts of `m` that no mapping of `before` touched.
        let mut at = m.start;
        let mut old: Vec<&Mapping> = before
            .iter()
            .filter(|b| b.start < m.end && b.end > m.start)
            .collect();
        old.sort_by_key(|b| b.start);
        let mut gaps = Vec::new();
        for b in old {
            if b.start > at {
                gaps.push((at, b.start));
            }
            at = at.max(b.end);
        }
        if at < m.end {
            gaps.push((at, m.end));
        }
        found.extend(
            gaps.into_iter()
                .filter(|(a, b)| b - a == len)
                .map(|(a, _)| a),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new reservation is found alone, joined to an old one on either
    /// side, or between two; one of another size, or one that was there
    /// before, is not.
    #[test]
    fn new_reservations_are_found_where_the_kernel_joined_them() {
        let line =
            |a: usize, b: usize, perms: &str| format!("{a:x}-{b:x} {perms} 00000000 00:00 0 \n");
        let before = parse_maps(
            &[
                line(0x1000, 0x2000, "r--p"),
                line(0x10000, 0x20000, "---p"),
                line(0x40000, 0x41000, "rw-p"),
            ]
            .concat(),
        );
        let len = 0x8000;
        // Joined below an old reservation.
        let now = parse_maps(
            &[
                line(0x1000, 0x2000, "r--p"),
                line(0x8000, 0x20000, "---p"),
                line(0x40000, 0x41000, "rw-p"),
            ]
            .concat(),
        );
        assert_eq!(new_reservations(&before, &now, len), vec![0x8000]);
        // Alone, and one of another size beside it.
        let now = parse_maps(
            &[
                line(0x1000, 0x2000, "r--p"),
                line(0x10000, 0x20000, "---p"),
                line(0x20000, 0x28000, "---p"),
                line(0x30000, 0x34000, "---p"),
                line(0x40000, 0x41000, "rw-p"),
            ]
            .concat(),
        );
        assert_eq!(new_reservations(&before, &now, len), vec![0x20000]);
        // Between an old reservation and a new stack guard: too long.
        let now = parse_maps(&[line(0x10000, 0x29000, "---p")].concat());
        assert!(new_reservations(&before, &now, len).is_empty());
        // Nothing new; a file mapping of that size is no reservation.
        assert!(new_reservations(&before, &before, 0x10000).is_empty());
        let file = parse_maps("50000-58000 ---p 00000000 08:01 1234 /lib/x.so\n");
        assert!(new_reservations(&before, &file, len).is_empty());
        // The process's own maps parse, and nothing is new against itself.
        let own = mappings();
        assert!(!own.is_empty());
        assert!(new_reservations(&own, &own, len).is_empty());
    }

    #[test]
    fn the_probe_answers_and_agrees_with_itself() {
        let first = scan();
        assert_eq!(first, probe(false));
        if let Scan::Inexact(n) = first {
            assert!(n != 1 && n <= 8, "{first}");
        }
        let tracked = tracked_scan();
        assert_eq!(tracked, probe(true));
        println!("plain {first}, tracked {tracked}");
    }

    /// A tracked page a guest wrote stays written after the reset writes
    /// zeros over it; pages nobody wrote, or only read, never show up.
    #[cfg(target_os = "linux")]
    #[test]
    fn tracked_pages_read_as_written_until_the_end() {
        if tracked_scan() != Scan::Exact {
            println!(
                "no write tracking here ({}): nothing to check",
                tracked_scan()
            );
            return;
        }
        let page = page_size();
        let len = 64 * page;
        // SAFETY: a fresh private anonymous mapping, unmapped at the end.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base.cast::<u8>();
        // As for the pool: registered and protected while inaccessible, made
        // accessible later.
        let tracker = WriteTracker::register(base as usize, len).expect("register");
        tracker.protect(base as usize, len).expect("protect");
        // SAFETY: the mapping above.
        assert_eq!(
            unsafe { libc::mprotect(base.cast(), len, libc::PROT_READ | libc::PROT_WRITE) },
            0
        );
        let pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        let written = |what: &str| -> Vec<usize> {
            let pages: Vec<usize> = (0..64)
                .filter(|i| written_pages(&pagemap, base as usize + i * page, page) == Some(1))
                .collect();
            println!("{what}: {pages:?}");
            pages
        };
        assert_eq!(written("fresh"), Vec::<usize>::new());
        // SAFETY: inside the mapping, now readable and writable.
        unsafe {
            base.add(3 * page + 17).write_volatile(1);
            base.add(40 * page).write_volatile(2);
            let _ = base.add(20 * page).read_volatile();
        }
        assert_eq!(written("two writes, one read"), vec![3, 40]);
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(base.add(3 * page), 0, page) };
        assert_eq!(written("after the reset"), vec![3, 40]);
        drop(tracker);
        // SAFETY: the mapping above, no longer used.
        unsafe { libc::munmap(base.cast(), len) };
    }
}
