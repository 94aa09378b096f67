//! An allocator that scans every block freed (or moved by a reallocation)
//! for a canary, so a test can prove that no copy of a token was left in
//! freed memory: what a core dump, a swapped page or the next owner of that
//! memory would see.
//!
//! A test binary installs it with `#[global_allocator]`, builds its fixtures,
//! [`arm`]s it, runs the flows under test, and reads [`hits`]. Every
//! reallocation is made a move (allocate, copy, scan the old block, free it),
//! as the worst allocator would, so a secret buffer that grows is caught
//! even where the system allocator would have grown it in place.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::alloc::{GlobalAlloc, Layout, System};

/// The bytes every canary token carries.
pub const CANARY: &[u8] = b"CANARYzq7x";

static ARMED: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);
/// The sizes of the first blocks found holding the canary, for the failure message.
static HIT_SIZES: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

/// The scanning allocator (see the [crate docs](crate)).
#[derive(Debug)]
pub struct ScanningAllocator;

/// Starts scanning freed blocks, from zero hits.
pub fn arm() {
    HITS.store(0, Ordering::SeqCst);
    for size in &HIT_SIZES {
        size.store(0, Ordering::SeqCst);
    }
    ARMED.store(true, Ordering::SeqCst);
}

/// Stops scanning.
pub fn disarm() {
    ARMED.store(false, Ordering::SeqCst);
}

/// How many freed blocks held the canary since [`arm`], and the sizes of the first few.
pub fn hits() -> (usize, Vec<usize>) {
    let sizes = HIT_SIZES.iter().map(|size| size.load(Ordering::SeqCst)).filter(|&size| size > 0).collect();
    (HITS.load(Ordering::SeqCst), sizes)
}

fn scan(block: &[u8]) {
    if block.len() >= CANARY.len() && block.windows(CANARY.len()).any(|window| window == CANARY) {
        let hit = HITS.fetch_add(1, Ordering::SeqCst);
        if let Some(size) = HIT_SIZES.get(hit) {
            size.store(block.len(), Ordering::SeqCst);
        }
    }
}

// SAFETY (for the whole impl): every call is forwarded to `System` with the
// caller's own arguments; the only additions read `size` bytes of a block the
// caller still owns (before it is freed) and copy between two live blocks.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for ScanningAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::Relaxed) {
            scan(unsafe { core::slice::from_raw_parts(ptr, layout.size()) });
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !ARMED.load(Ordering::Relaxed) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        let moved = unsafe { System.alloc(new_layout) };
        if !moved.is_null() {
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}
