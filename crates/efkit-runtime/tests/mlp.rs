//! The `mnist-mlp` and `mnist-cnn` problems through the config path: EF21-SGDM with per-layer
//! Top-K on a small MLP matches an independent computation (momentum,
//! per-tensor Top-K and averaging written out here; gradients from the
//! network oracle, itself checked against finite differences in efkit-nn),
//! gives bit-identical results for 1 and 2 threads, and counts the bits of
//! every tensor's message.
#![cfg(feature = "nn")]

use efkit_core::oracle::Oracle;
use efkit_nn::{mnist_dense, Network, NetworkOracle, Precision};
use efkit_problems::idx::MnistSplit;
use efkit_problems::split::SplitKind;
use efkit_runtime::config::parse_with_hints;
use efkit_runtime::setup::prepare;

const HIDDEN: usize = 6;
const ROWS: usize = 60;
const WORKERS: usize = 3;
const ETA: f64 = 0.5;
const GAMMA: f64 = 0.2;
const RATIO: f64 = 0.05;

fn config(threads: usize, extra_problem: &str, init: &str) -> String {
    format!(
        "seed = 4\nthreads = {threads}\n[problem]\nkind = \"mnist-mlp\"\nworkers = {WORKERS}\nhidden = [{HIDDEN}]\nrows = {ROWS}\n{extra_problem}\n\
[method]\nname = \"ef21-sgdm\"\neta = {ETA}\nbatch = 1.0\n\
[compressor]\nname = \"top-k\"\nratio = {RATIO}\nper_layer = true\nvalues = \"f64\"\n\
[step]\nrule = \"absolute\"\nvalue = {GAMMA}\n[init]\nkind = \"{init}\"\n[stop]\nmax_rounds = 5\n"
    )
}

/// Top-K of each block (K = max(1, floor(RATIO d_b)), ties to the lower index).
fn per_layer_top_k(x: &[f64], blocks: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    let mut off = 0;
    for &b in blocks {
        let k = ((RATIO * b as f64).floor() as usize).clamp(1, b);
        let mut idx: Vec<usize> = (off..off + b).collect();
        idx.sort_by(|&i, &j| x[j].abs().total_cmp(&x[i].abs()).then(i.cmp(&j)));
        for &i in &idx[..k] {
            out[i] = x[i];
        }
        off += b;
    }
    out
}

#[test]
fn ef21_sgdm_on_an_mlp_matches_an_independent_computation() {
    let rounds = 5;
    let mut c = prepare(&parse_with_hints(&config(1, "", "layers")).unwrap())
        .unwrap()
        .cluster;
    let spec = Network::mlp(&[784, HIDDEN, 10]).unwrap();
    let d = spec.dim();
    assert_eq!(c.server.state.x, spec.init(4));
    // independent: the same shards, full local batches (batch = 1.0)
    let train = mnist_dense(MnistSplit::Train).unwrap().head(ROWS);
    let mut oracles: Vec<NetworkOracle> = train
        .shards(WORKERS, SplitKind::Contiguous, 4)
        .unwrap()
        .into_iter()
        .map(|s| NetworkOracle::new(spec.clone(), s, Precision::F32).unwrap())
        .collect();
    let blocks = spec.blocks();
    let mut x = spec.init(4);
    let grad = |o: &mut NetworkOracle, x: &[f64]| {
        let mut g = vec![0.0; d];
        o.loss_grad(x, &mut g);
        g
    };
    // v_i^0 = g_i^0 = grad f_i(x^0) (init_batch defaults to the full shard)
    let mut v: Vec<Vec<f64>> = oracles.iter_mut().map(|o| grad(o, &x)).collect();
    let mut g = v.clone();
    for t in 0..rounds {
        c.step().unwrap();
        for k in 0..d {
            x[k] -= GAMMA * g.iter().map(|gi| gi[k]).sum::<f64>() / WORKERS as f64;
        }
        for (i, o) in oracles.iter_mut().enumerate() {
            let gr = grad(o, &x);
            for k in 0..d {
                v[i][k] = (1.0 - ETA) * v[i][k] + ETA * gr[k];
            }
            let diff: Vec<f64> = (0..d).map(|k| v[i][k] - g[i][k]).collect();
            let ck = per_layer_top_k(&diff, &blocks);
            for k in 0..d {
                g[i][k] += ck[k];
            }
        }
        let got = &c.server.state.x;
        let worst = got
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-12, "round {t}: max |x - x_ref| = {worst}");
    }
    // the workers' g_i after the last round's compression
    c.step().unwrap();
    for (w, gi) in c.workers.iter().zip(&g) {
        let worst = w
            .state
            .g
            .iter()
            .zip(gi)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-12, "g_i differs by {worst}");
    }
    // bits: the dense g_i^0 (f64 values on the wire) then per-layer messages whose
    // paper count is 32 per kept value: sum_b K_b per round
    let kept: usize = blocks
        .iter()
        .map(|&b| ((RATIO * b as f64).floor() as usize).clamp(1, b))
        .sum();
    let w0 = &c.workers[0].state;
    // (step 0 sends g_i^0, free in the papers' count; steps 1..=rounds the
    // compressed differences)
    assert_eq!(w0.bits_up_paper, 32 * (rounds as usize * kept) as u64);
    assert!(w0.bits_up_wire > 64 * d as u64);
}

/// Full batches, and minibatches (which two threads stage ahead in a
/// round's tail: the same results).
#[test]
fn mlp_runs_are_identical_for_one_and_two_threads() {
    for batch in ["batch = 1.0", "batch = 4"] {
        let run = |threads| {
            let cfg = config(threads, "", "layers").replace("batch = 1.0", batch);
            let mut c = prepare(&parse_with_hints(&cfg).unwrap()).unwrap().cluster;
            for _ in 0..12 {
                c.step().unwrap();
            }
            c.server
                .state
                .x
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(2), "{batch}");
    }
}

#[test]
fn mlp_config_errors_name_the_key() {
    let err = |s: String| match prepare(&parse_with_hints(&s).unwrap()) {
        Ok(_) => panic!("accepted:\n{s}"),
        Err(e) => e.to_string(),
    };
    assert!(err(config(1, "", "zeros")).contains("init.kind"));
    assert!(err(config(1, "sigma = 1.0", "layers")).contains("problem.sigma"));
    assert!(err(config(1, "dataset = \"a9a\"", "layers")).contains("problem.dataset"));
    assert!(
        err(config(1, "", "layers").replace("hidden = [6]", "hidden = [0]"))
            .contains("problem.hidden")
    );
    assert!(
        err(config(1, "", "layers").replace("rows = 60", "rows = 70000")).contains("problem.rows")
    );
    assert!(
        err(config(1, "", "layers").replace("\"absolute\"", "\"theory\"")).contains("step.rule")
    );
    // per-layer compression needs layers
    let quad = "seed = 1\n[problem]\nkind = \"noisy-quadratic\"\nworkers = 1\ndim = 4\nnoise = \"gaussian\"\nsigma = 1.0\n[method]\nname = \"ef21-sgd\"\nbatch = 1\n[compressor]\nname = \"top-k\"\nk = 1\nper_layer = true\n[step]\nrule = \"absolute\"\nvalue = 0.1\n";
    assert!(err(quad.to_string()).contains("compressor.per_layer"));
}

/// Every logged round of an MLP run reports the accuracy of the server's x on
/// the 10,000 MNIST test images, computed here independently by a plain
/// argmax over the network's outputs; LibSVM problems report none.
#[test]
fn mlp_metrics_carry_the_test_accuracy() {
    let mut c = prepare(&parse_with_hints(&config(1, "", "layers")).unwrap())
        .unwrap()
        .cluster;
    for _ in 0..3 {
        c.step().unwrap();
    }
    let m = c.metrics(0.0);
    let got = m.test_accuracy.expect("mnist-mlp has a test set");
    let test = mnist_dense(MnistSplit::Test).unwrap();
    assert_eq!(test.n, 10_000);
    // independent forward pass in f32, as the evaluator runs it
    let x = &c.server.state.x;
    let (w1, rest) = x.split_at(784 * HIDDEN);
    let (b1, rest) = rest.split_at(HIDDEN);
    let (w2, b2) = rest.split_at(10 * HIDDEN);
    let mut correct = 0usize;
    for j in 0..test.n {
        // pixel = grey level / 255 in f32, as the network reads it
        let px: Vec<f32> = test.row(j).iter().map(|&l| f32::from(l) / 255.0).collect();
        let h: Vec<f32> = (0..HIDDEN)
            .map(|u| {
                let z: f32 = (0..784)
                    .map(|k| w1[u * 784 + k] as f32 * px[k])
                    .sum::<f32>()
                    + b1[u] as f32;
                z.max(0.0)
            })
            .collect();
        let out: Vec<f32> = (0..10)
            .map(|c| {
                (0..HIDDEN)
                    .map(|u| w2[c * HIDDEN + u] as f32 * h[u])
                    .sum::<f32>()
                    + b2[c] as f32
            })
            .collect();
        let pred = (0..10).fold(0, |b, c| if out[c] > out[b] { c } else { b });
        correct += usize::from(pred as u32 == test.labels[j]);
    }
    let expect = correct as f64 / test.n as f64;
    // summation order differs from candle's: allow a few borderline images
    assert!((got - expect).abs() <= 5e-4, "{got} vs {expect}");
    assert!(got > 0.1, "3 rounds already beat chance: {got}");
    // a LibSVM problem has no test set in the metrics
    let logistic = "[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 2\n[method]\nname = \"ef21\"\n[compressor]\nname = \"top-k\"\nk = 1\n[step]\nrule = \"absolute\"\nvalue = 0.1\n";
    let mut c = prepare(&parse_with_hints(logistic).unwrap())
        .unwrap()
        .cluster;
    assert_eq!(c.metrics(0.0).test_accuracy, None);
}

fn cnn_config(threads: usize, problem_extra: &str) -> String {
    format!(
        "seed = 2\nthreads = {threads}\n[problem]\nkind = \"mnist-cnn\"\nworkers = 2\nchannels = [2, 4]\nhidden = [8]\nrows = 400\n{problem_extra}\n\
[method]\nname = \"ef21-sgdm\"\neta = 0.5\nbatch = 16\n\
[compressor]\nname = \"top-k\"\nratio = 0.1\nper_layer = true\n\
[step]\nrule = \"absolute\"\nvalue = 1.0\n[init]\nkind = \"layers\"\n[stop]\nmax_rounds = 5\n"
    )
}

/// The `mnist-cnn` problem through the config path: the network's tensors
/// are the compressor's blocks, its start is the layers' initialization,
/// runs are bit-identical for 1 and 2 threads, training lowers the loss,
/// and the metrics carry the test accuracy.
#[test]
fn cnn_problem_trains_per_layer_and_is_thread_independent() {
    let spec = Network::cnn(28, &[2, 4], 5, &[8], 10).unwrap();
    let run = |threads| {
        let mut c = prepare(&parse_with_hints(&cnn_config(threads, "")).unwrap())
            .unwrap()
            .cluster;
        assert_eq!(c.oracles[0].blocks(), Some(spec.blocks()));
        assert_eq!(c.server.state.x, spec.init(2));
        let before = c.evaluate().0;
        for _ in 0..60 {
            c.step().unwrap();
        }
        let m = c.metrics(0.0);
        // one Top-K message per tensor: the uplink's blocks are the tensors,
        // and a round's paper bits are 32 per kept value of every block
        let blocks = c.codecs.uplink.top_k_blocks().expect("per-layer Top-K");
        let lens: Vec<usize> = blocks.iter().map(|b| b.len).collect();
        assert_eq!(lens, spec.blocks());
        assert!(blocks.iter().all(|b| b.k >= 1 && b.k < b.len));
        let kept: u64 = blocks.iter().map(|b| b.k as u64).sum();
        let paper = c.workers[0].state.bits_up_paper;
        c.step().unwrap();
        assert_eq!(c.workers[0].state.bits_up_paper - paper, 32 * kept);
        (before, m, c.server.state.x.clone())
    };
    let (before, m1, x1) = run(1);
    let (_, m2, x2) = run(2);
    assert_eq!(x1, x2);
    assert_eq!(m1.loss.to_bits(), m2.loss.to_bits());
    assert!(m1.loss < 0.9 * before, "{} vs {before}", m1.loss);
    let acc = m1.test_accuracy.expect("mnist-cnn has a test set");
    assert!(acc > 0.2, "60 rounds beat chance: {acc}");
    // 8 tensors (4 weights, 4 biases), each its own block
    assert_eq!(spec.blocks().len(), 8);
}

#[test]
fn cnn_config_errors_name_the_key() {
    let err = |s: String| match prepare(&parse_with_hints(&s).unwrap()) {
        Ok(_) => panic!("accepted:\n{s}"),
        Err(e) => e.to_string(),
    };
    // three 5x5 convolutions leave nothing to pool on 28x28 images
    assert!(err(cnn_config(1, "").replace("[2, 4]", "[2, 4, 8]")).contains("problem.channels"));
    assert!(err(cnn_config(1, "").replace("[2, 4]", "[]")).contains("problem.channels"));
    assert!(err(cnn_config(1, "lambda = 0.1")).contains("problem.lambda"));
    // channels belong to the CNN only
    assert!(err(config(1, "channels = [4]", "layers")).contains("problem.channels"));
    assert!(err(cnn_config(1, "").replace("\"layers\"", "\"zeros\"")).contains("init.kind"));
}
