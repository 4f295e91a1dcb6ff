//! The one bounds-checked way to read packet memory.

/// Returns a pointer to a `T` at `offset` bytes from `start`, or `None` if the `T` would end
/// past `end`. The explicit comparison against `end` is what the verifier needs to see.
#[inline(always)]
pub(crate) fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *const T)
}
