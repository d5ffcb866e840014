//! A round in steady state allocates no state-sized buffer
//! (docs/architecture.md, "State as plain values"): counted with a counting
//! global allocator around the clusters' `step` over 126 rounds after 200
//! warm-up rounds, for EF21 with a model downlink (the server recycles two
//! model buffers, the workers share the broadcast), for EF21-SGDM and for
//! Safe-EF, in dimensions where every d-vector is at least 2 KiB. A buffer
//! allocated every round would count 126 times; what may remain is a
//! data-dependent scratch buffer reaching a new high-water mark (Safe-EF's
//! Top-K candidate list grows once, at round 284, when a large tie bucket
//! first occurs) and the thread pool's job queue (rayon through crossbeam's
//! injector allocates one small block per 63 jobs: every 63 EF21 rounds, one
//! job each, or every 21 Safe-EF rounds, three jobs each).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use efkit_runtime::config::parse_with_hints;
use efkit_runtime::safe::{prepare_safe, SafeConfig};
use efkit_runtime::setup::prepare;

struct Counting;

/// Allocations below [`LARGE`] bytes.
static SMALL: AtomicU64 = AtomicU64::new(0);
/// Allocations of at least [`LARGE`] bytes.
static BIG: AtomicU64 = AtomicU64::new(0);
const LARGE: usize = 2048;

fn count(size: usize) {
    if size >= LARGE {
        BIG.fetch_add(1, Ordering::Relaxed);
    } else {
        SMALL.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUNDS: u64 = 126;

/// (large, small) allocations over [`ROUNDS`] rounds of `step` after 200
/// warm-up rounds.
fn allocations(mut step: impl FnMut()) -> (u64, u64) {
    for _ in 0..200 {
        step();
    }
    let (b0, s0) = (BIG.load(Ordering::Relaxed), SMALL.load(Ordering::Relaxed));
    for _ in 0..ROUNDS {
        step();
    }
    (
        BIG.load(Ordering::Relaxed) - b0,
        SMALL.load(Ordering::Relaxed) - s0,
    )
}

fn ef21_family(method: &str, extra: &str) -> (u64, u64) {
    let cfg = parse_with_hints(&format!(
        "seed = 3\nthreads = 1\n[problem]\nkind = \"noisy-quadratic\"\nworkers = 4\ndim = 1000\nnoise = \"gaussian\"\nsigma = 0.1\n\
         [method]\nname = \"{method}\"\n{extra}\n[compressor]\nname = \"top-k\"\nk = 10\n\
         [step]\nrule = \"absolute\"\nvalue = 0.1\n[init]\nkind = \"gaussian\"\n"
    ))
    .unwrap();
    let mut c = prepare(&cfg).unwrap().cluster;
    allocations(|| c.step().unwrap())
}

/// Safe-EF (switching subgradient, EF14 uplink, stochastic minibatches) on
/// Neyman-Pearson classification over w8a (d = 300).
fn safe_ef() -> (u64, u64) {
    let cfg = SafeConfig::from_toml(
        "seed = 3\nthreads = 1\n[problem]\nkind = \"neyman-pearson\"\ndataset = \"w8a\"\nworkers = 4\n\
         loss = \"hinge\"\ntau = 0.4\nradius = 3.0\n[method]\nname = \"safe-ef\"\nstep_multiplier = 16.0\nbatch = 8\n\
         [compressor]\nname = \"top-k\"\nratio = 0.05\n[theory]\nrounds = 400\n[stop]\nmax_rounds = 1000\n",
    )
    .unwrap();
    let mut c = prepare_safe(&cfg).unwrap().cluster;
    allocations(|| c.step().unwrap())
}

/// One test (the counters are process-wide, and a second test running
/// beside it would count in).
#[test]
fn rounds_do_not_allocate_state_sized_buffers() {
    for (name, (big, small), jobs_per_round) in [
        ("EF21", ef21_family("ef21", ""), 1),
        (
            "EF21-SGDM",
            ef21_family("ef21-sgdm", "eta = 0.1\nbatch = 1\ninit_batch = 1"),
            1,
        ),
        ("Safe-EF", safe_ef(), 3),
    ] {
        // at most a growth or two of a data-dependent scratch buffer
        assert!(
            big <= 2,
            "{name}: {big} allocations of >= {LARGE} bytes in {ROUNDS} rounds"
        );
        // the pool's job-queue blocks (one per 63 jobs), and little else
        let queue_blocks = (ROUNDS * jobs_per_round).div_ceil(63);
        assert!(
            small <= queue_blocks + 2,
            "{name}: {small} small allocations in {ROUNDS} rounds (job queue: {queue_blocks})"
        );
    }
}
