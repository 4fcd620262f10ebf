//! The plugins' allocator. A plugin process lives a millisecond or two and allocates a few hundred KiB, yet musl's
//! malloc maps and unmaps pages as blocks come and go (about 20 `mmap`/`munmap` pairs and their page faults per
//! ADD). Here memory is taken from one static region and never given back, except the most recent block (a buffer
//! that grew, a temporary string), whose space the next allocation reuses. A process that outgrows the region gets
//! the system's allocator for the rest, so a large GC or config only costs what it did before.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Address space only: the kernel gives a page of it when it is first touched.
const SIZE: usize = 8 << 20;

/// `top` comes first so that it shares a page with the heap's first blocks: placed after the region, it
/// was a page of its own, read then written (two page faults) by the first allocation.
#[repr(C)]
pub struct Arena {
    /// Offset of the first free byte in `heap`.
    top: AtomicUsize,
    heap: UnsafeCell<[u8; SIZE]>,
}

// SAFETY: `heap` is only handed out in disjoint blocks, each claimed by a compare-and-swap of `top`.
unsafe impl Sync for Arena {}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

impl Arena {
    pub const fn new() -> Self {
        Arena { top: AtomicUsize::new(0), heap: UnsafeCell::new([0; SIZE]) }
    }

    fn base(&self) -> usize {
        self.heap.get() as usize
    }

    /// The offset of `ptr` in the region, if it came from there.
    fn offset(&self, ptr: *mut u8) -> Option<usize> {
        (ptr as usize).checked_sub(self.base()).filter(|&off| off < SIZE)
    }

    fn claim(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.base();
        let mut top = self.top.load(Relaxed);
        loop {
            let start = (base + top).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size()).filter(|&end| end <= SIZE)?;
            match self.top.compare_exchange_weak(top, end, Relaxed, Relaxed) {
                Ok(_) => return Some((base + start) as *mut u8),
                Err(now) => top = now,
            }
        }
    }

    /// Moves the end of the last block from `end` to `new_end`; false if the block ending at `end` is not the last.
    fn move_top(&self, end: usize, new_end: usize) -> bool {
        new_end <= SIZE && self.top.compare_exchange(end, new_end, Relaxed, Relaxed).is_ok()
    }

    /// How many bytes of the region are in use (for tests).
    pub fn used(&self) -> usize {
        self.top.load(Relaxed)
    }
}

// SAFETY: every block is either a disjoint, suitably aligned range of `heap` or the system allocator's, and each is
// handed back to where it came from (told apart by its address).
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's promise that `layout` is non-zero in size, passed on.
        self.claim(layout).unwrap_or_else(|| unsafe { System.alloc(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.offset(ptr) {
            // Only the last block's space can be reused; `move_top` leaves every other block where it is.
            Some(off) => {
                self.move_top(off + layout.size(), off);
            }
            // SAFETY: not ours, so the system allocator's, with the layout it was allocated with.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let Some(off) = self.offset(ptr) {
            let end = off + layout.size();
            if new_size <= layout.size() {
                self.move_top(end, off + new_size);
                return ptr;
            }
            // The last block grows where it is: a Vec being filled or a string being built.
            if off.checked_add(new_size).is_some_and(|new_end| self.move_top(end, new_end)) {
                return ptr;
            }
        }
        // SAFETY: the caller promises `new_size` with `layout`'s alignment is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`; the old block is valid for `layout.size()` bytes and is not used after `dealloc`.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("a valid layout")
    }

    #[test]
    fn blocks_are_aligned_and_disjoint_and_the_last_one_is_reused() {
        static ARENA: Arena = Arena::new();
        let arena = &ARENA;
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(16, 64));
            assert_eq!(b as usize % 64, 0);
            assert!(b as usize >= a as usize + 3);
            let used = arena.used();
            arena.dealloc(a, layout(3, 1)); // not the last: its space stays taken
            assert_eq!(arena.used(), used);
            arena.dealloc(b, layout(16, 64));
            let c = arena.alloc(layout(16, 64));
            assert_eq!(c, b, "the last block's space is reused");
        }
    }

    #[test]
    fn the_last_block_grows_in_place_and_others_move_with_their_bytes() {
        static ARENA: Arena = Arena::new();
        let arena = &ARENA;
        unsafe {
            let a = arena.alloc(layout(4, 1));
            a.copy_from(b"abcd".as_ptr(), 4);
            let grown = arena.realloc(a, layout(4, 1), 100);
            assert_eq!(grown, a);
            let b = arena.alloc(layout(8, 8));
            let moved = arena.realloc(grown, layout(100, 1), 200);
            assert_ne!(moved, grown);
            assert!(moved as usize >= b as usize + 8);
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"abcd");
        }
    }

    #[test]
    fn a_process_that_outgrows_the_region_gets_the_systems_memory() {
        static ARENA: Arena = Arena::new();
        let arena = &ARENA;
        unsafe {
            let big = arena.alloc(layout(SIZE - 10, 1));
            assert!(arena.offset(big).is_some());
            let spill = arena.alloc(layout(64, 8));
            assert!(!spill.is_null());
            assert!(arena.offset(spill).is_none(), "from the system allocator");
            spill.write_bytes(7, 64);
            let spill = arena.realloc(spill, layout(64, 8), 4096);
            assert_eq!(*spill.add(63), 7);
            arena.dealloc(spill, layout(4096, 8));
            // Growing the region's block past its end moves it to the system's memory, bytes and all.
            big.write_bytes(1, 16);
            let moved = arena.realloc(big, layout(SIZE - 10, 1), SIZE + 10);
            assert!(arena.offset(moved).is_none());
            assert_eq!(*moved.add(15), 1);
            arena.dealloc(moved, layout(SIZE + 10, 1));
            assert_eq!(arena.used(), 0, "the region's last block was freed by the move");
        }
    }
}
