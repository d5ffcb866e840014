//! Latency of the MPI backend's collectives: a broadcast of m bytes from rank 0
//! (the downlink) and a gatherv of m bytes from every rank to rank 0 (the
//! uplinks), for m = 64 B .. 1 MiB.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_latency -p efkit-runtime
//! mpirun -n 4 target/release/examples/mpi_latency [REPS]
//! ```
//!
//! Prints one Markdown table row per size: the median over REPS (default 200)
//! of the slowest rank's time for the broadcast and the gatherv alone, and of
//! rank 0's time for a broadcast followed by a 4-byte gather (the
//! communication skeleton of one round), in microseconds.

use efkit_runtime::mpi_backend::MpiRuntime;

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let rt = MpiRuntime::init().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    if rt.is_root() {
        println!(
            "P = {} ranks, median of {reps} repetitions (slowest rank)\n",
            rt.size()
        );
        println!("| message m | bcast of m (us) | gatherv of m from each rank (us) | bcast of m + 4-byte gather, at rank 0 (us) |");
        println!("|---:|---:|---:|---:|");
    }
    let mut size = 64usize;
    while size <= 1 << 20 {
        // warm-up, then the measured repetitions (fewer for large messages)
        let r = if size >= 1 << 18 {
            reps.div_ceil(4)
        } else {
            reps
        };
        rt.collective_latency(size, 5);
        let l = rt.collective_latency(size, r);
        if rt.is_root() {
            let label = if size >= 1 << 20 {
                format!("{} MiB", size >> 20)
            } else if size >= 1 << 10 {
                format!("{} KiB", size >> 10)
            } else {
                format!("{size} B")
            };
            println!(
                "| {label} | {:.1} | {:.1} | {:.1} |",
                l.bcast * 1e6,
                l.gatherv * 1e6,
                l.round_trip * 1e6
            );
        }
        size *= 4;
    }
}
