//! Method-level tests on small quadratics: the hand-worked EF21 trajectory of
//! algorithms.md §12.1 and the invariants of §12.3.

use efkit_core::bits::{BitReader, BitWriter};
use efkit_core::compress::{
    build, CompressCtx, CompressedVec, Compressor, CompressorClass, CompressorSpec, DecodeCtx,
    ValueFormat,
};
use efkit_core::error::{CompressError, DecodeError};
use efkit_core::method::{
    decode_uplink, Codecs, MethodSpec, Parts, RoundCtx, Server, Uplink, Worker,
};
use efkit_core::oracle::Oracle;
use efkit_core::rng::Rng;

/// f_i(x) = 1/2 ||x - b||^2.
struct Quadratic {
    b: Vec<f64>,
}

impl Oracle for Quadratic {
    fn dim(&self) -> usize {
        self.b.len()
    }
    fn num_samples(&self) -> Option<usize> {
        Some(1)
    }
    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        let mut l = 0.0;
        for ((g, xi), bi) in grad.iter_mut().zip(x).zip(&self.b) {
            *g = xi - bi;
            l += 0.5 * (xi - bi) * (xi - bi);
        }
        l
    }
    fn loss(&mut self, x: &[f64]) -> f64 {
        let mut g = vec![0.0; x.len()];
        self.loss_grad(x, &mut g)
    }
    fn stochastic_grad(
        &mut self,
        x: &[f64],
        _b: usize,
        _rng: &mut Rng,
        drawn: &mut Vec<u32>,
        grad: &mut [f64],
    ) -> f64 {
        drawn.clear();
        drawn.push(0);
        self.loss_grad(x, grad)
    }
    fn indexed_grad(&mut self, x: &[f64], _idx: &[u32], grad: &mut [f64]) -> f64 {
        self.loss_grad(x, grad)
    }
}

/// A linear, deterministic "compressor" C(x) = 0.5 x (alpha = 0.75), dense f64.
#[derive(Debug)]
struct Half(usize);

impl Compressor for Half {
    fn name(&self) -> &'static str {
        "half"
    }
    fn describe(&self) -> String {
        "half".into()
    }
    fn dim(&self) -> usize {
        self.0
    }
    fn class(&self) -> CompressorClass {
        CompressorClass::Contractive { alpha: 0.75 }
    }
    fn is_deterministic(&self) -> bool {
        true
    }
    fn compress(
        &self,
        x: &[f64],
        _ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        out.reset_dense(x.len());
        for (o, v) in out.values.iter_mut().zip(x) {
            *o = 0.5 * v;
            w.write_f64(*o);
        }
        Ok(())
    }
    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        out.reset_dense(self.0);
        for o in out.values.iter_mut() {
            *o = r.read_f64()?;
        }
        Ok(())
    }
    fn paper_bits(&self, _c: &CompressedVec) -> u64 {
        32 * self.0 as u64
    }
}

fn spec(name: &str, k: Option<usize>) -> CompressorSpec {
    CompressorSpec {
        k,
        values: Some(ValueFormat::F64),
        ..CompressorSpec::named(name)
    }
}

fn codecs(uplink: Box<dyn Compressor>, d: usize) -> Codecs {
    Codecs {
        uplink,
        dense: build(&spec("identity", None), d).unwrap(),
        downlink: None,
    }
}

struct Sim {
    parts: Parts,
    codecs: Codecs,
    server: Server,
    workers: Vec<Worker>,
    oracles: Vec<Quadratic>,
}

impl Sim {
    fn new(
        method: &MethodSpec,
        gamma: f64,
        c: Box<dyn Compressor>,
        bs: &[Vec<f64>],
        x0: &[f64],
    ) -> Self {
        let n = bs.len();
        let d = x0.len();
        let parts = method.parts(gamma, n, &vec![Some(1); n]).unwrap();
        Sim {
            parts,
            codecs: codecs(c, d),
            server: Server::new(n, x0),
            workers: (0..n).map(|i| Worker::new(i, x0)).collect(),
            oracles: bs.iter().map(|b| Quadratic { b: b.clone() }).collect(),
        }
    }

    fn round(&mut self) {
        let rc = RoundCtx {
            seed: 7,
            round: self.server.state.round,
        };
        let down = self.server.state.next_down.clone();
        let wire = self.server.state.next_wire.clone();
        for (w, o) in self.workers.iter_mut().zip(self.oracles.iter_mut()) {
            w.step(&down, &wire, o, &self.parts, &self.codecs, rc)
                .unwrap();
            // what travels decodes to what the worker applied
            let mut dec = Uplink::default();
            decode_uplink(
                &w.scratch.wire.bytes,
                &self.parts,
                &self.codecs,
                rc.round,
                efkit_core::method::uplink_shared_key(7, w.state.id, rc.round),
                &mut dec,
            )
            .unwrap();
            assert!(dec.vec.bit_eq(&w.scratch.up.vec));
            assert_eq!(dec.replace, w.scratch.up.replace);
            // without its last byte it does not decode, and leaves no part
            // of itself in the output
            let bytes = &w.scratch.wire.bytes;
            let key = efkit_core::method::uplink_shared_key(7, w.state.id, rc.round);
            let cut = &bytes[..bytes.len() - 1];
            assert!(
                decode_uplink(cut, &self.parts, &self.codecs, rc.round, key, &mut dec).is_err()
            );
            assert!(dec.vec.indices.is_empty() && dec.vec.values.is_empty() && !dec.replace);
        }
        let ups: Vec<Option<&Uplink>> = self.workers.iter().map(|w| Some(&w.scratch.up)).collect();
        self.server
            .apply(&ups, &self.parts, &self.codecs, rc)
            .unwrap();
    }
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

/// algorithms.md §12.1, EF21 with Top-1 and compressed init, by hand.
#[test]
fn ef21_hand_worked_trajectory() {
    let mut m = MethodSpec::named("ef21");
    m.init = efkit_core::method::InitMode::Compressed;
    let bs = vec![vec![4.0, 0.0], vec![0.0, 3.0]];
    let mut sim = Sim::new(
        &m,
        0.1,
        build(&spec("top-k", Some(1)), 2).unwrap(),
        &bs,
        &[0.0, 0.0],
    );
    // rows t = 0..5: x^t, g_1^t, g_2^t, g^t
    let table: [([f64; 2], [f64; 2], [f64; 2], [f64; 2]); 6] = [
        ([0.0, 0.0], [-4.0, 0.0], [0.0, -3.0], [-2.0, -1.5]),
        ([0.2, 0.15], [-3.8, 0.0], [0.2, -3.0], [-1.8, -1.5]),
        ([0.38, 0.3], [-3.8, 0.3], [0.2, -2.7], [-1.8, -1.2]),
        ([0.56, 0.42], [-3.44, 0.3], [0.56, -2.7], [-1.44, -1.2]),
        ([0.704, 0.54], [-3.44, 0.54], [0.56, -2.46], [-1.44, -0.96]),
        (
            [0.848, 0.636],
            [-3.152, 0.54],
            [0.848, -2.46],
            [-1.152, -0.96],
        ),
    ];
    for (t, (x, g1, g2, g)) in table.iter().enumerate() {
        // x^t is the model broadcast at the start of round t
        assert!(
            close(&sim.server.state.x, x, 1e-12),
            "x^{t}: {:?}",
            sim.server.state.x
        );
        sim.round();
        assert!(
            close(&sim.workers[0].state.g, g1, 1e-12),
            "g_1^{t}: {:?}",
            sim.workers[0].state.g
        );
        assert!(
            close(&sim.workers[1].state.g, g2, 1e-12),
            "g_2^{t}: {:?}",
            sim.workers[1].state.g
        );
        assert!(
            close(&sim.server.state.g, g, 1e-12),
            "g^{t}: {:?}",
            sim.server.state.g
        );
    }
}

fn random_problem(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    use rand::Rng as _;
    let mut rng = efkit_core::rng::rng_from_key(seed);
    (0..n)
        .map(|_| (0..d).map(|_| rng.gen_range(-5.0..5.0)).collect())
        .collect()
}

/// §12.3: the server's g equals the mean of the workers' g_i every round.
#[test]
fn server_g_is_mean_of_worker_g() {
    let bs = random_problem(5, 7, 1);
    let mut sim = Sim::new(
        &MethodSpec::named("ef21"),
        0.05,
        build(&spec("top-k", Some(2)), 7).unwrap(),
        &bs,
        &[0.0; 7],
    );
    for _ in 0..60 {
        sim.round();
        let mut mean = vec![0.0; 7];
        for w in &sim.workers {
            for (m, g) in mean.iter_mut().zip(&w.state.g) {
                *m += g / 5.0;
            }
        }
        assert!(close(&sim.server.state.g, &mean, 1e-12));
    }
}

/// §12.3: EF21 with the identity compressor is distributed GD.
#[test]
fn ef21_with_identity_is_gd() {
    let bs = random_problem(4, 6, 2);
    let x0 = vec![1.0; 6];
    let mut ef = Sim::new(
        &MethodSpec::named("ef21"),
        0.3,
        build(&spec("identity", None), 6).unwrap(),
        &bs,
        &x0,
    );
    let mut gd = Sim::new(
        &MethodSpec::named("gd"),
        0.3,
        build(&spec("identity", None), 6).unwrap(),
        &bs,
        &x0,
    );
    for _ in 0..40 {
        ef.round();
        gd.round();
        assert!(close(&ef.server.state.x, &gd.server.state.x, 1e-12));
    }
}

/// §12.3: EF14 and EF21 produce identical iterates for a linear deterministic
/// compressor, with EF21's compressed initialization (w_i^t = gamma g_i^t).
#[test]
fn ef14_equals_ef21_for_linear_compressor() {
    let bs = random_problem(3, 5, 3);
    let x0 = vec![0.5; 5];
    let mut m21 = MethodSpec::named("ef21");
    m21.init = efkit_core::method::InitMode::Compressed;
    let gamma = 0.2;
    let mut ef21 = Sim::new(&m21, gamma, Box::new(Half(5)), &bs, &x0);
    let mut ef14 = Sim::new(
        &MethodSpec::named("ef14"),
        gamma,
        Box::new(Half(5)),
        &bs,
        &x0,
    );
    for _ in 0..50 {
        ef21.round();
        ef14.round();
        assert!(
            close(&ef21.server.state.x, &ef14.server.state.x, 1e-11),
            "{:?} vs {:?}",
            ef21.server.state.x,
            ef14.server.state.x
        );
    }
}

/// EF21+ keeps, per worker, the candidate closer to the true gradient
/// (checked against both candidates computed by hand each round, the flag
/// included; the step 0.5 moves the gradient enough that both are taken),
/// and the server (which stores every g_i) agrees with the workers.
#[test]
fn ef21_plus_server_tracks_workers() {
    let bs = random_problem(4, 9, 4);
    let mut sim = Sim::new(
        &MethodSpec::named("ef21-plus"),
        0.5,
        build(&spec("top-k", Some(1)), 9).unwrap(),
        &bs,
        &[0.0; 9],
    );
    // Top-1 by hand (ties to the lower index), in f64
    let top1 = |v: &[f64]| {
        let mut j = 0;
        for (i, a) in v.iter().enumerate() {
            if a.abs() > v[j].abs() {
                j = i;
            }
        }
        let mut c = vec![0.0; v.len()];
        c[j] = v[j];
        c
    };
    let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
    let mut chose = [0usize; 2];
    for round in 0..40 {
        let before: Vec<Vec<f64>> = sim.workers.iter().map(|w| w.state.g.clone()).collect();
        sim.round();
        for (i, w) in sim.workers.iter().enumerate() {
            assert!(close(&sim.server.state.g_i[i], &w.state.g, 1e-12));
            if round == 0 {
                continue;
            }
            // the two candidates at the x the worker used
            let grad: Vec<f64> = w.state.x.iter().zip(&bs[i]).map(|(x, b)| x - b).collect();
            let diff: Vec<f64> = grad.iter().zip(&before[i]).map(|(h, g)| h - g).collect();
            let markov: Vec<f64> = before[i]
                .iter()
                .zip(top1(&diff))
                .map(|(g, c)| g + c)
                .collect();
            let plain = top1(&grad);
            let (dm, db) = (dist(&markov, &grad), dist(&plain, &grad));
            let (want, replace) = if db < dm {
                (&plain, true)
            } else {
                (&markov, false)
            };
            assert!(close(&w.state.g, want, 1e-12), "round {round} worker {i}");
            assert_eq!(w.scratch.up.replace, replace, "round {round} worker {i}");
            chose[usize::from(replace)] += 1;
        }
    }
    // both candidates are taken over the run
    assert!(chose[0] > 0 && chose[1] > 0, "{chose:?}");
}

/// DCGD (no feedback) with the linear C(x) = x/2 is gradient descent at
/// half the step: x - gamma (1/n) sum_i C(grad f_i) = x - (gamma/2) grad f.
#[test]
fn dcgd_with_a_linear_compressor_is_gd_at_the_scaled_step() {
    let bs = random_problem(3, 5, 7);
    let x0 = vec![0.5; 5];
    let gamma = 0.3;
    let mut dcgd = Sim::new(
        &MethodSpec::named("dcgd"),
        gamma,
        Box::new(Half(5)),
        &bs,
        &x0,
    );
    let mut gd = Sim::new(
        &MethodSpec::named("gd"),
        gamma / 2.0,
        build(&spec("identity", None), 5).unwrap(),
        &bs,
        &x0,
    );
    let mut x = x0.clone();
    for _ in 0..30 {
        dcgd.round();
        gd.round();
        // and both are GD by hand
        let n = bs.len() as f64;
        let mean: Vec<f64> = (0..5)
            .map(|j| bs.iter().map(|b| x[j] - b[j]).sum::<f64>() / n)
            .collect();
        for (xj, g) in x.iter_mut().zip(&mean) {
            *xj -= gamma / 2.0 * g;
        }
        assert!(close(&dcgd.server.state.x, &gd.server.state.x, 1e-12));
        assert!(close(&dcgd.server.state.x, &x, 1e-12));
    }
}

/// EF21-SGDM's fused worker path (momentum and difference v_i - g_i in one
/// pass over the gradient the oracle hands over, as f64 or in f32 pieces)
/// gives bit for bit the state and the messages of the general path
/// (momentum, then the difference in the feedback), which a weight scale of
/// exactly 1 (EF21-W's division by s_i = 1) selects.
#[test]
fn ef21_sgdm_fused_path_equals_the_general_path() {
    let d = 8;
    let b: Vec<f64> = (0..d).map(|j| j as f64 - 3.5).collect();
    let x0 = vec![0.25; d];
    let mut m = MethodSpec::named("ef21-sgdm");
    m.eta = Some(0.3);
    m.batch = Some(efkit_core::method::BatchSize::Count(1));
    let parts = m.parts(0.1, 1, &[None]).unwrap();
    let codecs = codecs(build(&spec("top-k", Some(2)), d).unwrap(), d);
    for pieces in [false, true] {
        let mut fused = (
            Worker::new(0, &x0),
            Server::new(1, &x0),
            Pieces::noisy(&b, pieces),
        );
        let mut general = (
            Worker::new(0, &x0),
            Server::new(1, &x0),
            Pieces::noisy(&b, pieces),
        );
        general.0.weight_scale = Some(1.0);
        general.1.weight_scales = Some(vec![1.0]);
        for round in 0..6 {
            let rc = RoundCtx { seed: 3, round };
            for (w, s, o) in [&mut fused, &mut general]
                .into_iter()
                .map(|t| (&mut t.0, &mut t.1, &mut t.2))
            {
                let down = s.state.next_down.clone();
                let wire = s.state.next_wire.clone();
                w.step(&down, &wire, o, &parts, &codecs, rc).unwrap();
                s.apply(&[Some(&w.scratch.up)], &parts, &codecs, rc)
                    .unwrap();
            }
            assert_eq!(fused.0.state, general.0.state, "round {round}");
            assert_eq!(fused.0.scratch.wire, general.0.scratch.wire);
            assert_eq!(fused.1.state, general.1.state);
        }
        // the run did move: momentum and estimates are not trivial
        assert!(fused.0.state.v.iter().any(|v| v.abs() > 0.1));
        assert!(fused.1.state.x != x0);
    }
}

/// A streaming oracle whose gradients are f32 values, as a network's are:
/// round_f32(x - b + xi) with xi from the sample stream (first rounded to a
/// grid of `step`, if any, so that magnitudes tie; plus `spikes` from the
/// second call on), handed over in f32 pieces of the sizes `layout`
/// (cycled), as a network hands over its tensors, or whole in f64 when
/// `layout` is empty. `poison = (call, j, value)` puts `value` at
/// coordinate j in that call.
struct Pieces {
    b: Vec<f64>,
    layout: Vec<usize>,
    step: Option<f64>,
    spikes: Vec<f64>,
    poison: Option<(u64, usize, f64)>,
    calls: u64,
}

impl Pieces {
    /// The plain noisy quadratic, in f32 pieces of 3 entries or whole.
    fn noisy(b: &[f64], pieces: bool) -> Self {
        Pieces {
            b: b.to_vec(),
            layout: if pieces { vec![3] } else { Vec::new() },
            step: None,
            spikes: Vec::new(),
            poison: None,
            calls: 0,
        }
    }
}

impl Oracle for Pieces {
    fn dim(&self) -> usize {
        self.b.len()
    }
    fn num_samples(&self) -> Option<usize> {
        None
    }
    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        Quadratic { b: self.b.clone() }.loss_grad(x, grad)
    }
    fn loss(&mut self, x: &[f64]) -> f64 {
        Quadratic { b: self.b.clone() }.loss(x)
    }
    fn stochastic_grad(
        &mut self,
        x: &[f64],
        _b: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        grad: &mut [f64],
    ) -> f64 {
        use rand::Rng as _;
        drawn.clear();
        for ((g, xi), bi) in grad.iter_mut().zip(x).zip(&self.b) {
            let raw = xi - bi + rng.gen_range(-1.0..1.0);
            let raw = self.step.map_or(raw, |st| (raw / st).round() * st);
            *g = f64::from(raw as f32);
        }
        if self.calls > 0 {
            for (g, sp) in grad.iter_mut().zip(&self.spikes) {
                *g += sp;
            }
        }
        if let Some((call, j, value)) = self.poison {
            if call == self.calls {
                grad[j] = value;
            }
        }
        self.calls += 1;
        0.0
    }
    fn stochastic_grad_with(
        &mut self,
        x: &[f64],
        batch: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        buf: &mut [f64],
        sink: &mut dyn FnMut(usize, efkit_core::oracle::GradPiece<'_>),
    ) -> f64 {
        let l = self.stochastic_grad(x, batch, rng, drawn, buf);
        if self.layout.is_empty() {
            sink(0, efkit_core::oracle::GradPiece::F64(buf));
            return l;
        }
        let g32: Vec<f32> = buf.iter().map(|&v| v as f32).collect();
        let (mut off, mut p) = (0, 0);
        while off < g32.len() {
            let end = (off + self.layout[p % self.layout.len()]).min(g32.len());
            sink(off, efkit_core::oracle::GradPiece::F32(&g32[off..end]));
            off = end;
            p += 1;
        }
        l
    }
    fn indexed_grad(&mut self, _x: &[f64], _idx: &[u32], _grad: &mut [f64]) -> f64 {
        unreachable!("streaming oracle")
    }
}

/// The Top-K selection fused into EF21-SGDM's momentum pass (t = v_i - g_i
/// selected while v_i is updated, never stored) sends bit for bit the
/// messages of the general path (t stored, then `compress`), and leaves the
/// same state: for Top-K and per-layer Top-K with blocks below and above the
/// sampling size, gradient pieces that are exactly the blocks, cut across
/// them, or one f64 buffer, magnitudes with many ties (a coarse grid, and
/// a constant gradient), a gradient large only where the streamed
/// selection samples (so that its pass keeps fewer than K and the block is
/// selected from a stored t), a NaN and a value that overflows the f32 wire
/// format, which both paths report with the same error. The general path is
/// selected by a weight scale of exactly 1; the fused path's counters show
/// that both of its ways were taken.
#[test]
fn ef21_sgdm_fused_top_k_equals_the_general_path() {
    // 20,003: the streamed pass also has a tail after its chunks of 8
    let blocks = [20_003, 7, 3_000, 40_000];
    let d: usize = blocks.iter().sum();
    let per_layer = CompressorSpec {
        ratio: Some(0.01),
        per_layer: Some(true),
        ..CompressorSpec::named("top-k")
    };
    let compressors = [
        efkit_core::compress::build_blockwise(&per_layer, &blocks).unwrap(),
        build(&spec("top-k", Some(600)), d).unwrap(),
    ];
    for c in &compressors {
        assert!(
            c.top_k_blocks().is_some(),
            "{} offers the fused path",
            c.describe()
        );
    }
    let b: Vec<f64> = (0..d)
        .map(|j| ((j * 7919) % 1000) as f64 / 500.0 - 1.0)
        .collect();
    let layouts: [Vec<usize>; 3] = [blocks.to_vec(), vec![9_000], Vec::new()];
    let mut m = MethodSpec::named("ef21-sgdm");
    m.eta = Some(0.3);
    m.batch = Some(efkit_core::method::BatchSize::Count(1));
    let parts = m.parts(0.1, 1, &[None]).unwrap();
    // spikes where `StreamedTopK::new` samples a block (runs of 32 entries,
    // evenly spaced), and nowhere else
    let mut spikes = vec![0.0; d];
    let mut off = 0;
    for &len in &blocks {
        if len >= 1 << 14 {
            let runs = (len / 64).clamp(1024, 16384) / 32;
            for r in 0..runs {
                for i in 0..32 {
                    let j = off + r * (len / runs) + i;
                    spikes[j] = 1000.0 + (j % 97) as f64;
                }
            }
        }
        off += len;
    }
    let (mut streamed, mut stored_spiky) = (0, 0);
    let mut cases = 0;
    for (ci, c) in compressors.into_iter().enumerate() {
        let codecs = Codecs {
            uplink: c,
            dense: build(&spec("identity", None), d).unwrap(),
            downlink: None,
        };
        for layout in &layouts {
            for (step, b_scale, spiky, poison) in [
                (0.25, 1.0, false, None),
                (1e-9, 1.0, false, None),
                // x - b + noise with b = 0, x = 0: noise only; step 4: all zero
                (4.0, 0.0, false, None),
                (0.25, 1.0, true, None),
                (0.25, 1.0, false, Some((3, 25_000, f64::NAN))),
                (0.25, 1.0, false, Some((2, 25_000, 1e39))),
            ] {
                let x0 = vec![0.0; d];
                let oracle = || Pieces {
                    b: b.iter().map(|v| v * b_scale).collect(),
                    layout: layout.clone(),
                    step: Some(step),
                    spikes: if spiky { spikes.clone() } else { Vec::new() },
                    poison,
                    calls: 0,
                };
                let mut fused = (Worker::new(0, &x0), Server::new(1, &x0), oracle());
                let mut general = (Worker::new(0, &x0), Server::new(1, &x0), oracle());
                general.0.weight_scale = Some(1.0);
                general.1.weight_scales = Some(vec![1.0]);
                for round in 0..5 {
                    let rc = RoundCtx { seed: 3, round };
                    let mut results = Vec::new();
                    for (w, s, o) in [&mut fused, &mut general]
                        .into_iter()
                        .map(|t| (&mut t.0, &mut t.1, &mut t.2))
                    {
                        let down = s.state.next_down.clone();
                        let wire = s.state.next_wire.clone();
                        let r = w.step(&down, &wire, o, &parts, &codecs, rc);
                        if r.is_ok() {
                            s.apply(&[Some(&w.scratch.up)], &parts, &codecs, rc)
                                .unwrap();
                        }
                        results.push(r.map_err(|e| e.to_string()));
                    }
                    let what =
                        format!("compressor {ci}, layout {layout:?}, step {step}, round {round}");
                    assert_eq!(results[0], results[1], "{what}");
                    if let Err(e) = &results[0] {
                        // the poisoned round fails, naming the coordinate
                        // (block-local for an overflow in a per-layer block)
                        assert_eq!(poison.map(|p| p.0), Some(round), "{what}: {e}");
                        assert!(
                            e.contains("25000") || e.contains("overflows"),
                            "{what}: {e}"
                        );
                        break;
                    }
                    assert_eq!(fused.0.state, general.0.state, "{what}");
                    assert_eq!(fused.0.scratch.wire, general.0.scratch.wire, "{what}");
                    assert_eq!(fused.1.state, general.1.state, "{what}");
                    cases += 1;
                }
                // the run moved (except where every gradient rounds to 0)
                assert_eq!(fused.1.state.x != x0, step < 4.0);
                assert_eq!(
                    general.0.scratch.streamed_blocks + general.0.scratch.stored_blocks,
                    0
                );
                streamed += fused.0.scratch.streamed_blocks;
                if spiky && ci == 0 && layout.as_slice() == blocks.as_slice() {
                    stored_spiky += fused.0.scratch.stored_blocks;
                }
            }
        }
    }
    assert!(cases >= 2 * 3 * 4 * 5);
    assert!(streamed > 0, "the streamed selection ran");
    // the spikes made the pass keep too few at least once: selected from t
    // (the two small blocks alone add 2 per round)
    assert!(stored_spiky > 2 * 4, "stored selections: {stored_spiky}");
}

/// The preset table is what `MethodSpec::parts` enforces: every preset is
/// listed once, in `METHOD_NAMES` order; it accepts exactly the keys the
/// table says it reads and fails without each required key, naming it.
#[test]
fn preset_table_matches_what_parts_accepts() {
    use efkit_core::method::{BatchSize, MethodSpec, Regularizer, METHOD_NAMES, PRESETS};
    let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
    assert_eq!(names, METHOD_NAMES);
    let set = |m: &mut MethodSpec, key: &str| match key {
        "eta" => m.eta = Some(0.5),
        "batch" => m.batch = Some(BatchSize::Count(2)),
        "init_batch" => m.init_batch = Some(BatchSize::Count(2)),
        "p" => m.p = Some(0.5),
        "shared_coin" => m.shared_coin = Some(true),
        "participation" => m.participation = Some(0.5),
        "independent" => m.independent = Some(true),
        "prox" => m.prox = Some(Regularizer::L1 { lambda: 0.01 }),
        other => panic!("unknown key {other}"),
    };
    let keys = [
        "eta",
        "batch",
        "init_batch",
        "p",
        "shared_coin",
        "participation",
        "independent",
        "prox",
    ];
    let n_local = [Some(10); 4];
    for p in PRESETS {
        let base = || {
            let mut m = MethodSpec::named(p.name);
            p.required.iter().for_each(|k| set(&mut m, k));
            m
        };
        base()
            .parts(0.1, 4, &n_local)
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        for key in keys {
            let mut m = base();
            set(&mut m, key);
            match m.parts(0.1, 4, &n_local) {
                Ok(_) => assert!(p.reads(key), "{} accepts {key}", p.name),
                Err(e) => {
                    assert!(!p.reads(key), "{} rejects {key}: {e}", p.name);
                    assert!(e.to_string().contains(&format!("method.{key}")), "{e}");
                }
            }
        }
        for key in p.required {
            let mut m = MethodSpec::named(p.name);
            p.required
                .iter()
                .filter(|k| *k != key)
                .for_each(|k| set(&mut m, k));
            let e = m.parts(0.1, 4, &n_local).unwrap_err().to_string();
            assert!(e.contains(&format!("method.{key}")), "{}: {e}", p.name);
        }
    }
}

/// EF21's server step (the fused hot path) equals the plain formula bit for
/// bit: acc = sum of the uplinks in worker order, g += acc / n,
/// x -= gamma g, for dense uplinks (round 0) and sparse ones (overlapping
/// indices, a pair that cancels, a -0.0, an absent worker), over rounds
/// (the sum it clears as it reads must start from zero each time), and its
/// downlink carries that x, encoded as `encode_model` writes it; with one
/// block of the pass and with several (the last one partial).
#[test]
fn ef21_server_step_equals_the_plain_formula() {
    for d in [50, 2 * 2048 + 77] {
        ef21_server_step_is_the_plain_formula(d);
    }
}

/// A fork on scoped threads, cut `ways` ways.
struct Threads(usize);

impl efkit_core::fork::Fork for Threads {
    fn join(&self, a: &mut (dyn FnMut() + Send), b: &mut (dyn FnMut() + Send)) {
        std::thread::scope(|s| {
            s.spawn(move || a());
            b();
        });
    }

    fn ways(&self) -> usize {
        self.0
    }
}

fn ef21_server_step_is_the_plain_formula(d: usize) {
    use efkit_core::method::{encode_model, Wire};
    let (n, gamma) = (3, 0.3);
    let parts = MethodSpec::named("ef21")
        .parts(gamma, n, &[None; 3])
        .unwrap();
    let codecs = codecs(build(&spec("top-k", Some(5)), d).unwrap(), d);
    let x0: Vec<f64> = (0..d).map(|j| (j as f64 * 0.37).sin()).collect();
    let mut server = Server::new(n, &x0);
    // the same pass cut over threads: 2 and 3 ways (uneven cuts)
    let mut forked: Vec<(Server, Threads)> = [2, 3]
        .map(|w| (Server::new(n, &x0), Threads(w)))
        .into_iter()
        .collect();
    let (mut x, mut g) = (x0.clone(), vec![0.0; d]);
    let inv_n = 1.0 / n as f64;
    let bits = |v: &[f64]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
    for round in 0..6u64 {
        let ups: Vec<Uplink> = (0..n)
            .map(|i| {
                let vec = if round == 0 {
                    CompressedVec {
                        dim: d,
                        dense: true,
                        indices: Vec::new(),
                        values: (0..d).map(|j| ((i * d + j) as f64).cos()).collect(),
                    }
                } else {
                    // workers 0 and 1 overlap at 3 (cancelling) and 7
                    let mut idx = vec![3, 7, (11 * i + round as usize) % d, d - 1 - i];
                    idx.sort_unstable();
                    idx.dedup();
                    let values = idx
                        .iter()
                        .map(|&j| match (i, j) {
                            (0, 3) => 1.5,
                            (1, 3) => -1.5,
                            (2, 7) => -0.0,
                            _ => (j as f64 + round as f64 * 0.1).sin() * (i as f64 + 1.0),
                        })
                        .collect();
                    CompressedVec {
                        dim: d,
                        dense: false,
                        indices: idx.into_iter().map(|j| j as u32).collect(),
                        values,
                    }
                };
                Uplink {
                    replace: false,
                    vec,
                }
            })
            .collect();
        // worker 1 is absent in round 4
        let present = |i: usize| round != 4 || i != 1;
        let refs: Vec<Option<&Uplink>> = (0..n).map(|i| present(i).then(|| &ups[i])).collect();
        let mut acc = vec![0.0; d];
        for u in refs.iter().flatten() {
            u.vec.add_to(&mut acc);
        }
        for j in 0..d {
            g[j] += acc[j] * inv_n;
            x[j] -= gamma * g[j];
        }
        let rc = RoundCtx { seed: 1, round };
        server.apply(&refs, &parts, &codecs, rc).unwrap();
        for (f, fork) in &mut forked {
            f.apply_forked(|i| refs[i], &parts, &codecs, rc, &*fork)
                .unwrap();
            let (a, b) = (&f.state, &server.state);
            let ways = fork.0;
            assert_eq!(bits(&a.x), bits(&b.x), "round {round}, {ways} ways: x");
            assert_eq!(bits(&a.g), bits(&b.g), "round {round}, {ways} ways: g");
            assert_eq!(bits(&a.next_down.x), bits(&b.next_down.x), "round {round}");
            assert_eq!(a.next_wire, b.next_wire, "round {round}, {ways} ways: wire");
        }
        let st = &server.state;
        assert_eq!(bits(&st.g), bits(&g), "round {round}: g");
        assert_eq!(bits(&st.x), bits(&x), "round {round}: x");
        assert_eq!(bits(&st.next_down.x), bits(&x), "round {round}: downlink");
        assert!(st.next_down.is_model);
        let (mut w, mut wire) = (BitWriter::new(), Wire::default());
        encode_model(&x, &mut w, &mut wire);
        assert_eq!(st.next_wire, wire, "round {round}: encoded downlink");
    }
    assert!(x.iter().zip(&x0).any(|(a, b)| a != b));
}

/// A finite sum of 40 samples that records which minibatches it is asked
/// for and which ones it is told to stage.
#[derive(Default)]
struct Draws {
    drawn: Vec<Vec<u32>>,
    staged: Vec<Vec<u32>>,
}

impl Oracle for Draws {
    fn dim(&self) -> usize {
        3
    }
    fn num_samples(&self) -> Option<usize> {
        Some(40)
    }
    fn stage_batch(&mut self, batch: usize, rng: &mut Rng) {
        let mut idx = Vec::new();
        efkit_core::oracle::sample_without_replacement(40, batch, rng, &mut idx);
        self.staged.push(idx);
    }
    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        for (g, xi) in grad.iter_mut().zip(x) {
            *g = xi - 1.0;
        }
        0.0
    }
    fn loss(&mut self, _x: &[f64]) -> f64 {
        0.0
    }
    fn stochastic_grad(
        &mut self,
        x: &[f64],
        batch: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        grad: &mut [f64],
    ) -> f64 {
        efkit_core::oracle::sample_without_replacement(40, batch, rng, drawn);
        self.drawn.push(drawn.clone());
        self.indexed_grad(x, drawn, grad)
    }
    fn indexed_grad(&mut self, x: &[f64], _idx: &[u32], grad: &mut [f64]) -> f64 {
        self.loss_grad(x, grad)
    }
}

/// `Worker::stage_next` announces exactly the minibatch the next round
/// draws (the momentum methods' first round uses `init_batch`, later ones
/// `batch`), and nothing for methods whose next draw is not a plain
/// minibatch (full gradients, PAGE's coin).
#[test]
fn stage_next_announces_the_next_rounds_draw() {
    use efkit_core::method::BatchSize;
    for (name, staged_rounds) in [
        ("ef21-sgd", true),
        ("ef14-sgd", true),
        ("ef21-sgdm", true),
        ("ef21-sgd2m", true),
        ("ef21", false),
        ("ef21-page", false),
    ] {
        let pre = efkit_core::method::preset(name).unwrap();
        let takes = |key: &str| pre.required.contains(&key) || pre.optional.contains(&key);
        let method = MethodSpec {
            eta: takes("eta").then_some(0.5),
            batch: takes("batch").then_some(BatchSize::Count(5)),
            init_batch: takes("init_batch").then_some(BatchSize::Count(9)),
            p: takes("p").then_some(0.5),
            ..MethodSpec::named(name)
        };
        let x0 = [0.5, -1.0, 2.0];
        let parts = method.parts(0.1, 1, &[Some(40)]).unwrap();
        let codecs = codecs(build(&spec("top-k", Some(1)), 3).unwrap(), 3);
        let mut server = Server::new(1, &x0);
        let mut worker = Worker::new(0, &x0);
        let mut oracle = Draws::default();
        for round in 0..5 {
            let rc = RoundCtx { seed: 11, round };
            let (down, wire) = (
                server.state.next_down.clone(),
                server.state.next_wire.clone(),
            );
            worker
                .step(&down, &wire, &mut oracle, &parts, &codecs, rc)
                .unwrap();
            worker.stage_next(&mut oracle, &parts, rc);
            server
                .apply(&[Some(&worker.scratch.up)], &parts, &codecs, rc)
                .unwrap();
        }
        if staged_rounds {
            // staged after rounds 0..4 = drawn in rounds 1..5 (the last unused)
            assert_eq!(oracle.staged.len(), 5, "{name}");
            assert_eq!(oracle.drawn.len(), 5, "{name}");
            assert_eq!(oracle.staged[..4], oracle.drawn[1..], "{name}");
            let sizes: Vec<usize> = oracle.drawn.iter().map(Vec::len).collect();
            let first = if name.ends_with('m') { 9 } else { 5 };
            assert_eq!(sizes, [first, 5, 5, 5, 5], "{name}");
        } else {
            assert!(oracle.staged.is_empty(), "{name}");
        }
    }
}

/// Each regularizer's prox: hand-worked values, and the defining property
/// prox_{gamma r}(x) = argmin_y r(y) + ||y - x||^2 / (2 gamma), checked
/// against 2,000 seeded perturbations of the answer (none does better).
#[test]
fn regularizer_prox_values_and_minimality() {
    use efkit_core::method::Regularizer;
    let prox = |r: &Regularizer, x: &[f64], gamma: f64| {
        let mut y = x.to_vec();
        r.prox(&mut y, gamma);
        y
    };
    let x = [3.0, -0.5, -2.0, 0.0];
    // hand-worked values
    assert_eq!(
        prox(&Regularizer::L1 { lambda: 0.5 }, &x, 2.0),
        [2.0, 0.0, -1.0, 0.0]
    );
    assert_eq!(
        prox(&Regularizer::L2Squared { lambda: 1.0 }, &x, 3.0),
        [0.75, -0.125, -0.5, 0.0]
    );
    assert_eq!(
        prox(&Regularizer::Box { lo: -1.0, hi: 1.0 }, &x, 7.0),
        [1.0, -0.5, -1.0, 0.0]
    );
    let ball = prox(&Regularizer::Ball { radius: 1.0 }, &[3.0, 4.0], 0.1);
    assert!((ball[0] - 0.6).abs() < 1e-15 && (ball[1] - 0.8).abs() < 1e-15);
    assert_eq!(
        prox(&Regularizer::Ball { radius: 10.0 }, &[3.0, 4.0], 0.1),
        [3.0, 4.0]
    );
    assert_eq!(prox(&Regularizer::Zero, &x, 5.0), x);
    // values
    assert_eq!(Regularizer::L1 { lambda: 0.5 }.value(&x), 2.75);
    assert_eq!(Regularizer::L2Squared { lambda: 2.0 }.value(&x), 13.25);
    assert_eq!(
        Regularizer::Box { lo: -1.0, hi: 1.0 }.value(&x),
        f64::INFINITY
    );
    assert_eq!(Regularizer::Box { lo: -3.0, hi: 3.0 }.value(&x), 0.0);
    // minimality against perturbations
    let mut rng = efkit_core::rng::rng_from_key(11);
    use rand::Rng as _;
    for r in [
        Regularizer::L1 { lambda: 0.7 },
        Regularizer::L2Squared { lambda: 1.3 },
        Regularizer::Box { lo: -0.4, hi: 1.1 },
        Regularizer::Ball { radius: 1.5 },
    ] {
        for _ in 0..20 {
            let x: Vec<f64> = (0..5).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let gamma = rng.gen_range(0.1..2.0);
            let p = prox(&r, &x, gamma);
            let obj = |y: &[f64]| {
                r.value(y)
                    + y.iter()
                        .zip(&x)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f64>()
                        / (2.0 * gamma)
            };
            let best = obj(&p);
            assert!(best.is_finite(), "{r:?}: prox left the set");
            for _ in 0..100 {
                let scale = rng.gen_range(1e-4..0.5);
                let y: Vec<f64> = match r {
                    // for a set, move towards a random point of it: the
                    // move stays feasible (convexity), so every trial counts
                    Regularizer::Box { lo, hi } => p
                        .iter()
                        .map(|v| v + scale * (rng.gen_range(lo..hi) - v))
                        .collect(),
                    Regularizer::Ball { radius } => {
                        let z: Vec<f64> = (0..5).map(|_| rng.gen_range(-1.0..1.0)).collect();
                        let nz = z.iter().map(|v| v * v).sum::<f64>().sqrt();
                        let u = radius * rng.gen_range(0.0..1.0) / nz;
                        p.iter()
                            .zip(&z)
                            .map(|(v, zj)| v + scale * (u * zj - v))
                            .collect()
                    }
                    _ => p
                        .iter()
                        .map(|v| v + scale * rng.gen_range(-1.0..1.0))
                        .collect(),
                };
                assert!(
                    obj(&y).is_finite()
                        || !matches!(r, Regularizer::Box { .. } | Regularizer::Ball { .. })
                );
                assert!(
                    obj(&y) >= best - 1e-12,
                    "{r:?}: {y:?} beats prox {p:?} at x = {x:?}"
                );
            }
        }
    }
}
