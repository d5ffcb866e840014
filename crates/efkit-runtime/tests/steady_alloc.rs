//! A round in steady state does not allocate (docs/architecture.md, "State
//! as plain values"): counted with a counting global allocator around
//! `Cluster::step` after 200 warm-up rounds (buffers sized by the data, such
//! as Top-K's candidate lists, first grow to their largest need), for EF21
//! with a model downlink (the server recycles two model buffers, the workers
//! share the broadcast) and for EF21-SGDM.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use efkit_runtime::config::parse_with_hints;
use efkit_runtime::setup::prepare;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_per_round(method: &str, extra: &str, compressor: &str) -> Vec<u64> {
    let cfg = parse_with_hints(&format!(
        "seed = 3\nthreads = 1\n[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 4\n\
         [method]\nname = \"{method}\"\n{extra}\n[compressor]\n{compressor}\n[step]\nrule = \"absolute\"\nvalue = 0.5\n"
    ))
    .unwrap();
    let mut c = prepare(&cfg).unwrap().cluster;
    for _ in 0..200 {
        c.step().unwrap();
    }
    (0..20)
        .map(|_| {
            let before = ALLOCS.load(Ordering::Relaxed);
            c.step().unwrap();
            ALLOCS.load(Ordering::Relaxed) - before
        })
        .collect()
}

/// One test (the counter is process-wide, and the test harness's own
/// threads would count in a second test running beside it).
#[test]
fn rounds_do_not_allocate_in_steady_state() {
    let ef21 = allocations_per_round("ef21", "", "name = \"top-k\"\nk = 3");
    assert_eq!(ef21, vec![0; 20], "EF21");
    let sgdm = allocations_per_round(
        "ef21-sgdm",
        "eta = 0.1\nbatch = 16\ninit_batch = 16",
        "name = \"top-k\"\nk = 3",
    );
    assert_eq!(sgdm, vec![0; 20], "EF21-SGDM");
}
