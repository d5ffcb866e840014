//! EF21-family checkpoints (the Safe-EF family's are tested in
//! `safe_resume.rs`): for every method preset, a cluster restored from
//! a checkpoint written to disk and read back continues bit for bit like the
//! uninterrupted run (the model, the metrics, every worker's and the
//! server's state), including the presets with extra state (heavy-ball
//! momentum, EF21-BC's estimates, PAGE's previous iterate, EF21+'s g_i,
//! the momentum vectors of EF21-SGDM/SGD2M, partial participation).

use efkit_runtime::checkpoint::{self, Checkpoint};
use efkit_runtime::config::parse_with_hints;
use efkit_runtime::setup::prepare;
use efkit_runtime::Cluster;

fn preset_config(p: &efkit_core::method::Preset) -> String {
    format!(
        "seed = 3\nthreads = 2\n[problem]\nkind = \"logistic\"\ndataset = \"phishing\"\nworkers = 4\n\
         {}[step]\nrule = \"absolute\"\nvalue = 0.1\n",
        p.example_sections(8, 3)
    )
}

/// (loss, ||grad||^2, bits) bit patterns after each round.
fn trace(c: &mut Cluster, rounds: usize) -> Vec<(u64, u64, u64)> {
    (0..rounds)
        .map(|_| {
            c.step().unwrap();
            let m = c.metrics(0.0);
            (
                m.loss.to_bits(),
                m.grad_norm_sq.to_bits(),
                m.bits_up_wire.to_bits(),
            )
        })
        .collect()
}

#[test]
fn every_preset_resumes_bit_for_bit_through_a_checkpoint_file() {
    let dir = std::env::temp_dir().join(format!("efkit-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(checkpoint::CHECKPOINT_FILE);
    let (head, tail) = (5, 7);
    for p in efkit_core::method::PRESETS {
        let cfg = parse_with_hints(&preset_config(p)).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let mut full = prepare(&cfg).unwrap().cluster;
        let want = trace(&mut full, head + tail);
        let mut first = prepare(&cfg).unwrap().cluster;
        let got_head = trace(&mut first, head);
        assert_eq!(got_head[..], want[..head], "{}", p.name);
        let state = first.snapshot(0.5, 1.0);
        checkpoint::write(
            &path,
            &Checkpoint {
                state: state.clone(),
            },
        )
        .unwrap();
        let read = checkpoint::read(&path).unwrap().state;
        assert_eq!(
            read, state,
            "{}: the file does not give the state back",
            p.name
        );
        let mut resumed = prepare(&cfg).unwrap().cluster;
        // the check `efkit resume` makes before restoring
        let d = resumed.server.state.x.len();
        checkpoint::check_state(&read, resumed.n(), d, &resumed.parts)
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        resumed.restore(read).unwrap();
        let got_tail = trace(&mut resumed, tail);
        assert_eq!(
            got_tail[..],
            want[head..],
            "{}: resumed run differs",
            p.name
        );
        // the whole state, not only the metrics
        assert_eq!(
            resumed.snapshot(0.0, 0.0),
            full.snapshot(0.0, 0.0),
            "{}: state after resuming differs",
            p.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
