//! The binary's global allocator: mimalloc (v2), with plain allocations for the alignments every
//! mimalloc block already has.
//!
//! mimalloc: a request's buffers of 1–8 KiB (hyper's read buffer, the upstream head's header
//! map) are past glibc's per-thread cache, and glibc's general path for them (with its
//! coalescing of free chunks) was ~6% of keygate's CPU time at c=64, mimalloc's whole share ~4%.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`, whose v2 path
//! checks the alignment, looks for a suitably aligned free block and, past 1 KiB, takes the
//! generic aligned path; a byte buffer (`Vec<u8>`, `String`, `BytesMut`: alignment 1) paid all
//! of it, some 40–200 instructions more per allocation than `mi_malloc`. Every mimalloc block
//! is a whole number of machine words from a word-aligned start (its size classes are counted
//! in words), so an alignment up to a word's is met by `mi_malloc` as it is.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment of every block `mi_malloc` returns: a machine word's.
const WORD: usize = std::mem::size_of::<usize>();

pub struct MiMalloc;

// SAFETY: each method hands the layout's size (and, above a word, its alignment) to the
// mimalloc function of the same contract; mimalloc returns null on failure, as GlobalAlloc
// wants, and `mi_free` takes any pointer any of them returned.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a Rust type can have, up to 4 KiB and 64 bytes: the block is
    /// aligned, writable over its whole size, zeroed when asked, and keeps its bytes when it
    /// grows or shrinks.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let alloc = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64] {
            for size in (align..=4096).step_by(align) {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let zeroed = alloc.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size}/{align}");
                    assert!(std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0));
                    alloc.dealloc(zeroed, layout);

                    let ptr = alloc.alloc(layout);
                    assert!(!ptr.is_null());
                    assert_eq!(ptr as usize % align, 0, "{size}/{align}");
                    for i in 0..size {
                        *ptr.add(i) = i as u8;
                    }
                    let grown = alloc.realloc(ptr, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "grown {size}/{align}");
                    for i in 0..size {
                        assert_eq!(*grown.add(i), i as u8);
                    }
                    let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                    let shrunk = alloc.realloc(grown, grown_layout, align);
                    assert_eq!(shrunk as usize % align, 0, "shrunk {size}/{align}");
                    assert_eq!(*shrunk, 0);
                    alloc.dealloc(shrunk, Layout::from_size_align(align, align).unwrap());
                }
            }
        }
    }
}
