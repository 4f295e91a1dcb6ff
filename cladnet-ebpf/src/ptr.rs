//! The one bounds-checked way to touch packet memory.

/// Returns a pointer to a `T` at `offset` bytes from `start`, or `None` if the `T` would end
/// past `end`. The explicit comparison against `end` is what the verifier needs to see. The
/// pointer is `*mut` so the XDP program can rewrite the Ethernet header it checked.
#[inline(always)]
pub(crate) fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a `T` at `offset`, bounds-checked by [`ptr_at`].
#[inline(always)]
pub(crate) fn read_at<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the `T` lies inside the packet; packet bytes are valid for
    // any `T` made of bytes (every caller reads byte arrays or `u8`), and unaligned reads
    // are what `read_unaligned` is for.
    ptr_at::<T>(start, end, offset).map(|p| unsafe { p.read_unaligned() })
}
