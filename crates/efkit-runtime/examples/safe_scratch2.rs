use efkit_runtime::safe::*;
use efkit_runtime::Control;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let text = std::fs::read_to_string(&args[1]).unwrap();
    let mut cfg = SafeConfig::from_toml(&text).unwrap();
    for kv in &args[2..] {
        let (k, v) = kv.split_once('=').unwrap();
        match k {
            "method" => cfg.method.name = v.into(),
            "sm" => cfg.method.step_multiplier = v.parse().unwrap(),
            "tm" => cfg.method.threshold_multiplier = v.parse().unwrap(),
            "thr" => cfg.method.threshold = Some(v.parse().unwrap()),
            "ratio" => cfg.compressor.ratio = Some(v.parse().unwrap()),
            "comp" => { cfg.compressor.name = v.into(); if v == "identity" { cfg.compressor.ratio = None; } }
            "T" => cfg.stop.max_rounds = v.parse().unwrap(),
            "batch" => cfg.method.batch = Some(v.parse().unwrap()),
            "n" => cfg.problem.workers = v.parse().unwrap(),
            "seed" => cfg.seed = v.parse().unwrap(),
            "dsm" => cfg.method.dual_step_multiplier = Some(v.parse().unwrap()),
            _ => panic!("key {k}"),
        }
    }
    let mut p = prepare_safe(&cfg).unwrap();
    eprintln!("{}", serde_json::to_string(&p.info).unwrap());
    let stop = safe_stop(&cfg);
    let s = p.cluster.run(&stop, |m| {
        println!("{:>7} acc={:>10.3e} sub={:>10.3e} viol={:>9.3e} prod={:>7} gl={:>9.3e} fl={:.5} gb={:.3e} t={:.1}", m.round, m.accuracy.unwrap_or(f64::NAN), m.suboptimality.unwrap_or(f64::NAN), m.violation, m.productive_rounds, m.constraint_last, m.objective_last, m.gb_per_worker, m.seconds);
        Control::Continue
    });
    eprintln!("{:?} {:?}", s.status, s.message);
}
