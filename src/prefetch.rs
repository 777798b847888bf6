//! A hint to the CPU to bring one cache line in before it is needed.
//!
//! For memory the server reaches in a known order but long after it last touched it (a
//! client's next output line, the reorder ring ahead of the stream), so that the miss is
//! paid while other work runs, not by the store or load that needs the line.

/// Starts loading the cache line holding `p`. Any address will do: a prefetch never
/// faults, and on other architectures this does nothing.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and never faults.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
