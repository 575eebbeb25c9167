//! The process's allocator: mimalloc, asked for each layout the cheap way
//! when that way already gives the alignment.
//!
//! Every request allocates and frees a store, an instance's bookkeeping and
//! its host state, from two or more threads. glibc's arenas grow and trim
//! under that pattern (an `mprotect`, which takes the address-space lock,
//! every few requests); mimalloc's per-thread free lists keep that off the
//! request path. It is built without transparent huge pages (`no_thp`):
//! with them its arena made 28 MB of an idle host resident instead of 4 MB.
//!
//! The `mimalloc` crate's `GlobalAlloc` hands every layout to
//! `mi_malloc_aligned`, and mimalloc 3 serves that from a free block only
//! when the block it finds happens to sit at the alignment; otherwise it
//! takes its generic aligned path, which over-allocates. Yet the plain
//! `mi_malloc` already aligns every block of 16 bytes or more to 16, and
//! every smaller block to 8. So a layout whose alignment is at most 16 and
//! at most its size goes to `mi_malloc`, `mi_zalloc` and `mi_realloc`; only
//! the others take the aligned calls. Counted with callgrind over the
//! micro bench's instantiation part (`cargo bench -p gantry --bench
//! micro`), an allocation went from 80 instructions to 46, and a request
//! to `plain` from 158.0k to 154.6k.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment of every mimalloc block of at least this many bytes
/// (`MI_MAX_ALIGN_SIZE`); smaller blocks are word-aligned.
const MIN_ALIGN: usize = 16;

/// Whether `mi_malloc(size)` is already aligned to `align`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

/// mimalloc as the global allocator (see the module's text).
pub struct Allocator;

// SAFETY: every pointer handed out comes from mimalloc with at least the
// layout's size and alignment (plain calls only where their blocks already
// have it), and goes back to mimalloc, which frees and resizes blocks
// however they were allocated.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; mimalloc returns null when out of memory.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a pointer this allocator returned.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a pointer this allocator returned; a
        // block keeps its place when the new size fits it, and the block
        // `mi_realloc` moves to is aligned as `mi_malloc`'s are.
        unsafe {
            if plain(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size from 1 to 4 KiB and a few larger ones, at every alignment
    /// from 1 to 4 KiB, allocated many times over (so that blocks come from
    /// fresh pages and from free lists), zeroed or not, then grown and
    /// shrunk: each pointer has the alignment its layout asked for, and the
    /// bytes written before a resize are there after it.
    #[test]
    fn every_block_has_its_layout_s_alignment() {
        let a = Allocator;
        let mut sizes: Vec<usize> = (1..=4096).collect();
        sizes.extend([8191, 8192, 65536, 1 << 20]);
        for align in (0..=12).map(|s| 1usize << s) {
            let mut live = Vec::new();
            for round in 0..3 {
                for &size in &sizes {
                    let layout = Layout::from_size_align(size, align).expect("layout");
                    // SAFETY: a non-zero size; every block is freed below.
                    let p = unsafe {
                        if round == 1 {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        }
                    };
                    assert!(!p.is_null(), "size {size} align {align}");
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    if round == 1 {
                        // SAFETY: `p` holds `size` bytes.
                        let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                        assert!(bytes.iter().all(|&b| b == 0), "size {size} not zeroed");
                    }
                    // SAFETY: `p` holds at least one byte.
                    unsafe { p.write(0xa5) };
                    live.push((p, layout));
                }
                // Free every other block, so that the next round finds them
                // on free lists among blocks still in use.
                let mut kept = Vec::new();
                for (i, (p, layout)) in live.drain(..).enumerate() {
                    if i % 2 == 0 {
                        // SAFETY: allocated above with this layout.
                        unsafe { a.dealloc(p, layout) };
                    } else {
                        kept.push((p, layout));
                    }
                }
                live = kept;
            }
            for (p, layout) in live {
                let mut p = p;
                let mut layout = layout;
                for new_size in [layout.size() * 3, layout.size().div_ceil(2)] {
                    // SAFETY: `p` came from this allocator with `layout`.
                    p = unsafe { a.realloc(p, layout, new_size) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % layout.align(), 0, "realloc to {new_size}");
                    // SAFETY: the first byte survived the move.
                    assert_eq!(unsafe { p.read() }, 0xa5, "realloc to {new_size}");
                    layout = Layout::from_size_align(new_size, layout.align()).expect("layout");
                }
                // SAFETY: `p` now has `layout`.
                unsafe { a.dealloc(p, layout) };
            }
        }
    }
}
