//! Fork-join without a thread pool in the core.
//!
//! The core has no threading dependency (design.md §3); a runtime that has
//! threads hands the server a [`Fork`] so that its dense passes over the d
//! coordinates run on several threads. Every pass split this way is
//! coordinate-wise, so the results are the same bit for bit whatever the
//! split and whatever the thread count.

/// Runs two jobs, possibly at the same time.
pub trait Fork: Sync {
    /// Runs `a` and `b` and returns when both are done.
    fn join(&self, a: &mut (dyn FnMut() + Send), b: &mut (dyn FnMut() + Send));

    /// How many jobs can usefully run at once (a pass is cut into about
    /// this many pieces).
    fn ways(&self) -> usize;
}

/// Runs the jobs one after the other on the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl Fork for Serial {
    fn join(&self, a: &mut (dyn FnMut() + Send), b: &mut (dyn FnMut() + Send)) {
        a();
        b();
    }

    fn ways(&self) -> usize {
        1
    }
}
