//! Image classifiers as efkit oracles: a multilayer perceptron and a small
//! convolutional network.
//!
//! A network is a list of layers ([`Layer`]) applied to a flat image a:
//!
//!   dense:        h_l = W_l h_{l-1} + b_l,  W_l in R^{d_l x d_{l-1}},
//!   convolution:  h_l = pool(relu(W_l * h_{l-1} + b_l)), W_l in R^{c_l x c_{l-1} x k x k}
//!                 (valid cross-correlation, stride 1; pool: 2x2 average),
//!
//! with a ReLU after every layer but the last, whose outputs z are the
//! logits; the loss of a sample (a, y) is the softmax cross-entropy
//! -log softmax(z)_y. [`Network::mlp`] builds the perceptron of widths
//! (d_0, ..., d_L); [`Network::cnn`] a LeNet-style network (convolutions,
//! then dense layers). Worker i's objective is the mean over its shard,
//! f_i(x) = (1/N_i) sum_j loss_j(x), and a stochastic gradient is the mean
//! over a minibatch drawn uniformly without replacement
//! ([`efkit_core::oracle::sample_without_replacement`]), as for every finite
//! sum in efkit.
//!
//! The flat parameter vector x lists, layer after layer, W_l row-major then
//! b_l ([`Network::blocks`] gives the tensor sizes in that order), so a
//! per-layer compressor compresses each tensor separately, as the deep-learning
//! experiments of the EF21-SGDM paper (Fatkhullin, Tyurin & Richtarik,
//! NeurIPS 2023, §10 of algorithms.md) do.
//!
//! The forward and backward passes are candle's (CPU). Training runs in f32
//! ([`Precision::F32`], the usual choice for networks): x is rounded to f32 on
//! the way in and the gradient widened to f64 on the way out; [`Precision::F64`]
//! computes in f64, which the finite-difference tests use (they also check
//! candle's convolution and pooling gradients against a hand-written network).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Storage, Tensor, Var};
use efkit_core::oracle::{sample_without_replacement, GradPiece, GradSink, Oracle};
use efkit_core::rng::{stream, Purpose, Rng};
use rand::Rng as _;

use crate::data::{DenseImages, LEVELS};

/// Errors in a network's definition or data.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NetworkError {
    /// The layer widths are not a valid network.
    #[error("layers: {0}")]
    Layers(String),
    /// The data does not fit the network.
    #[error("data: {0}")]
    Data(String),
}

/// Arithmetic of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 tensors (training).
    F32,
    /// f64 tensors (checks against finite differences).
    F64,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }
}

/// One layer of a network. Every layer but the last is followed by a ReLU;
/// every convolution by the ReLU and then a 2x2 average pooling (stride 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// z = W h + b with W in R^{outputs x inputs} (row-major).
    Dense {
        /// Input width.
        inputs: usize,
        /// Output width.
        outputs: usize,
    },
    /// A valid (unpadded, stride 1) convolution of `channels_in` square
    /// images of side `side` with `channels_out` filters of side `kernel`;
    /// W is `[channels_out, channels_in, kernel, kernel]`.
    Conv {
        /// Input channels.
        channels_in: usize,
        /// Output channels (filters).
        channels_out: usize,
        /// Filter side.
        kernel: usize,
        /// Side of the input images.
        side: usize,
    },
}

impl Layer {
    /// Shapes of the weight and the bias.
    fn shapes(&self) -> [Vec<usize>; 2] {
        match *self {
            Layer::Dense { inputs, outputs } => [vec![outputs, inputs], vec![outputs]],
            Layer::Conv {
                channels_in,
                channels_out,
                kernel,
                ..
            } => [
                vec![channels_out, channels_in, kernel, kernel],
                vec![channels_out],
            ],
        }
    }

    /// Inputs per output unit (PyTorch's fan-in).
    fn fan_in(&self) -> usize {
        match *self {
            Layer::Dense { inputs, .. } => inputs,
            Layer::Conv {
                channels_in,
                kernel,
                ..
            } => channels_in * kernel * kernel,
        }
    }
}

/// A feed-forward classifier of images: a multilayer perceptron
/// ([`Network::mlp`]) or a small convolutional network ([`Network::cnn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Pixels per image.
    inputs: usize,
    layers: Vec<Layer>,
}

impl Network {
    /// A perceptron with widths `layers` = (inputs, hidden..., classes); at
    /// least two entries, each >= 1, and at least 2 classes.
    pub fn mlp(layers: &[usize]) -> Result<Network, NetworkError> {
        if layers.len() < 2 {
            return Err(NetworkError::Layers(format!(
                "need at least inputs and classes, got {layers:?}"
            )));
        }
        if let Some(k) = layers.iter().position(|&w| w == 0) {
            return Err(NetworkError::Layers(format!(
                "width {k} is 0 in {layers:?}"
            )));
        }
        Network::checked(
            layers[0],
            layers
                .windows(2)
                .map(|w| Layer::Dense {
                    inputs: w[0],
                    outputs: w[1],
                })
                .collect(),
        )
    }

    /// A LeNet-style network on one-channel `side` x `side` images: for each
    /// entry c of `channels` a `kernel` x `kernel` convolution to c channels,
    /// ReLU and 2x2 average pooling; then dense layers of widths `hidden`
    /// (ReLU) and `classes` outputs. Every convolution must leave an image of
    /// side >= 2 to pool.
    pub fn cnn(
        side: usize,
        channels: &[usize],
        kernel: usize,
        hidden: &[usize],
        classes: usize,
    ) -> Result<Network, NetworkError> {
        if channels.is_empty() || channels.contains(&0) || kernel == 0 || hidden.contains(&0) {
            return Err(NetworkError::Layers(format!(
                "channels {channels:?}, kernel {kernel} and hidden {hidden:?} must be non-empty and positive"
            )));
        }
        let mut layers = Vec::new();
        let (mut s, mut c) = (side, 1);
        for &out in channels {
            if s < kernel + 1 {
                return Err(NetworkError::Layers(format!(
                    "a {kernel}x{kernel} convolution of {s}x{s} images leaves less than 2x2 to pool"
                )));
            }
            layers.push(Layer::Conv {
                channels_in: c,
                channels_out: out,
                kernel,
                side: s,
            });
            let convolved = s - kernel + 1;
            s = convolved / 2; // 2x2 pooling drops an odd last row and column
            c = out;
        }
        let mut width = c * s * s;
        for &h in hidden.iter().chain(std::iter::once(&classes)) {
            layers.push(Layer::Dense {
                inputs: width,
                outputs: h,
            });
            width = h;
        }
        Network::checked(side * side, layers)
    }

    fn checked(inputs: usize, layers: Vec<Layer>) -> Result<Network, NetworkError> {
        let net = Network { inputs, layers };
        if net.classes() < 2 {
            return Err(NetworkError::Layers("need at least 2 classes".into()));
        }
        if net.blocks().iter().any(|&b| b > u32::MAX as usize) {
            return Err(NetworkError::Layers(
                "a tensor has more than 2^32 - 1 entries".into(),
            ));
        }
        Ok(net)
    }

    /// The layers, input to output.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Number of inputs (pixels).
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self.layers.last() {
            Some(Layer::Dense { outputs, .. }) => *outputs,
            _ => 0,
        }
    }

    /// Shapes of the parameter tensors in flat order: W_1, b_1, W_2, b_2, ...
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        self.layers.iter().flat_map(|l| l.shapes()).collect()
    }

    /// Sizes of the parameter tensors in flat order: W_1, b_1, W_2, b_2, ...
    pub fn blocks(&self) -> Vec<usize> {
        self.shapes().iter().map(|s| s.iter().product()).collect()
    }

    /// Number of parameters d.
    pub fn dim(&self) -> usize {
        self.blocks().iter().sum()
    }

    /// The initial point of PyTorch's `nn.Linear` and `nn.Conv2d`: every
    /// entry of W_l and b_l uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]
    /// (fan_in: inputs of a dense layer, in-channels x kernel area of a
    /// convolution), from the stream `(seed, Setup, worker = u64::MAX - 1,
    /// round 0)`.
    pub fn init(&self, seed: u64) -> Vec<f64> {
        let mut rng = stream(seed, Purpose::Setup, u64::MAX - 1, 0);
        let mut x = Vec::with_capacity(self.dim());
        for l in &self.layers {
            let bound = 1.0 / (l.fan_in() as f64).sqrt();
            let [w, b] = l.shapes();
            let count = w.iter().product::<usize>() + b.iter().product::<usize>();
            for _ in 0..count {
                x.push(rng.gen_range(-bound..bound));
            }
        }
        x
    }

    /// A lower bound on the memory of one forward and backward pass over
    /// `images` images in f32: each convolution's unfolded patches
    /// ([`conv_as_matmul`]) and its output before and after the ReLU, each
    /// dense layer's output twice, all kept for the backward pass, which
    /// needs as much again for their gradients.
    pub fn pass_bytes_lower_bound(&self, images: usize) -> u128 {
        let floats: u128 = self
            .layers
            .iter()
            .map(|l| match *l {
                Layer::Conv {
                    channels_in,
                    channels_out,
                    kernel,
                    side,
                } => {
                    let area = ((side - kernel + 1) as u128).pow(2);
                    area * (channels_in * kernel * kernel) as u128 + 2 * area * channels_out as u128
                }
                Layer::Dense { outputs, .. } => 2 * outputs as u128,
            })
            .sum();
        2 * 4 * images as u128 * floats
    }

    /// Images per forward pass when a whole data set is evaluated: 2,048,
    /// or fewer for a CNN so that the unfolded patches of a chunk
    /// ([`conv_as_matmul`]) stay near 16 MiB (about 150 MNIST images).
    pub fn eval_chunk(&self) -> usize {
        let patch_floats: usize = self
            .layers
            .iter()
            .map(|l| match *l {
                Layer::Conv {
                    channels_in,
                    kernel,
                    side,
                    ..
                } => (side - kernel + 1).pow(2) * channels_in * kernel * kernel,
                Layer::Dense { .. } => 0,
            })
            .sum();
        match patch_floats {
            0 => 2048,
            p => ((1 << 22) / p).clamp(32, 2048),
        }
    }

    /// The parameter tensors of x as candle variables (W_1, b_1, ...), in
    /// the arithmetic `precision`.
    pub fn params(&self, x: &[f64], precision: Precision) -> candle_core::Result<Vec<Var>> {
        make_params(self, x, precision, &Device::Cpu)
    }

    /// The forward pass with parameters `params` ([`Network::params`]) on
    /// the batch `input` (`[m, inputs]`): the logits `[m, classes]`.
    pub fn forward(&self, params: &[Var], input: &Tensor) -> candle_core::Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut h = input.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let w = params[2 * l].as_tensor();
            let b = params[2 * l + 1].as_tensor();
            h = match *layer {
                Layer::Dense { .. } => {
                    if h.rank() > 2 {
                        h = h.flatten_from(1)?;
                    }
                    h.matmul(&w.t()?)?.broadcast_add(b)?
                }
                Layer::Conv {
                    channels_in,
                    channels_out,
                    side,
                    kernel,
                } => {
                    let m = h.dim(0)?;
                    let conv = conv_as_matmul(
                        &h.reshape((m, channels_in * side * side))?,
                        w,
                        channels_in,
                        side,
                        kernel,
                    )?;
                    conv.broadcast_add(&b.reshape((1, channels_out, 1, 1))?)?
                }
            };
            if l < last {
                h = h.relu()?;
            }
            if matches!(layer, Layer::Conv { .. }) {
                h = h.avg_pool2d(2)?;
            }
        }
        Ok(h)
    }

    /// Candle's part of a gradient: forward pass, mean cross-entropy and
    /// (with `backward`) the backward pass. Returns the loss and the
    /// gradients.
    pub fn forward_backward(
        &self,
        params: &[Var],
        input: &Tensor,
        labels: &Tensor,
        backward: bool,
    ) -> candle_core::Result<(f64, Option<GradStore>)> {
        let start = Instant::now();
        let logits = self.forward(params, input)?;
        let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let store = if backward {
            Some(loss.backward()?)
        } else {
            None
        };
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        FORWARD_BACKWARD_NANOS.fetch_add(nanos, Ordering::Relaxed);
        THREAD_FORWARD_BACKWARD_NANOS.with(|t| t.set(t.get().saturating_add(nanos)));
        Ok((value, store))
    }
}

/// Time spent in [`Network::forward_backward`] so far.
static FORWARD_BACKWARD_NANOS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Time this thread has spent in [`Network::forward_backward`].
    static THREAD_FORWARD_BACKWARD_NANOS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Time the calling thread has spent in candle's forward and backward
/// passes ([`Network::forward_backward`]) so far: the per-thread part of
/// [`forward_backward_time`], for runs that share the process (a
/// reproduction runs one per thread) and read it on their own threads.
pub fn thread_forward_backward_time() -> Duration {
    Duration::from_nanos(THREAD_FORWARD_BACKWARD_NANOS.with(|t| t.get()))
}

/// Total time the process has spent in candle's forward and backward passes
/// ([`Network::forward_backward`]), summed over threads: a profiling counter
/// (one relaxed atomic add per call) that benchmarks read before and after a
/// round to measure the share of the round spent outside candle.
pub fn forward_backward_time() -> Duration {
    Duration::from_nanos(FORWARD_BACKWARD_NANOS.load(Ordering::Relaxed))
}

/// The valid (unpadded, stride 1) cross-correlation of the images `h`
/// (`[m, channels * side * side]`, channel-major) with the filters `w`
/// (`[out, channels, kernel, kernel]`): `[m, out, t, t]`, t = side - kernel + 1.
///
/// Computed as a matrix product with the unfolded patches (im2col: one
/// `index_select` gathers every patch), not with candle's direct `conv2d`,
/// whose CPU backward pass (a direct transposed convolution) made a CNN
/// round several times slower; gather, matmul and reshape all have cheap
/// gradients.
fn conv_as_matmul(
    h: &Tensor,
    w: &Tensor,
    channels: usize,
    side: usize,
    kernel: usize,
) -> candle_core::Result<Tensor> {
    let m = h.dim(0)?;
    let out = w.dim(0)?;
    let t = side - kernel + 1;
    let patch = channels * kernel * kernel;
    // for output position (r, c), entry (ch, p, q) of its patch is pixel
    // (ch, r + p, c + q) of the image
    let mut idx = Vec::with_capacity(t * t * patch);
    for r in 0..t {
        for c in 0..t {
            for ch in 0..channels {
                for p in 0..kernel {
                    for q in 0..kernel {
                        idx.push(((ch * side + r + p) * side + c + q) as u32);
                    }
                }
            }
        }
    }
    let idx = Tensor::from_vec(idx, t * t * patch, h.device())?;
    let patches = h.index_select(&idx, 1)?.reshape((m * t * t, patch))?;
    patches
        .matmul(&w.reshape((out, patch))?.t()?)? // [m t t, out]
        .reshape((m, t * t, out))?
        .transpose(1, 2)?
        .reshape((m, out, t, t))
}

/// How many rows ahead the minibatch gather prefetches.
const GATHER_AHEAD: usize = 4;

/// Rows of a shard to evaluate: all of them, or the listed ones.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Range(usize, usize),
    Listed(&'a [u32]),
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match *self {
            Rows::Range(a, b) => b - a,
            Rows::Listed(r) => r.len(),
        }
    }

    /// The shard row of the r-th batch entry.
    fn get(&self, r: usize) -> usize {
        match *self {
            Rows::Range(a, _) => a + r,
            Rows::Listed(rows) => rows[r] as usize,
        }
    }
}

/// Worker i's network on its shard of images.
///
/// The parameter tensors and the minibatch tensors are allocated once and
/// refilled in place every call (a candle in-place op), so a minibatch gradient costs
/// candle's forward/backward plus one conversion pass over x and one over the
/// gradient, with no fresh buffers (whose page faults cost as much as the
/// copies on a 200k-parameter network).
#[derive(Debug)]
pub struct NetworkOracle {
    spec: Network,
    data: DenseImages,
    precision: Precision,
    /// Samples per forward pass when the whole shard is evaluated.
    chunk: usize,
    device: Device,
    /// This oracle's parameter variables, refilled from x each call.
    params: Option<Vec<Var>>,
    /// The last minibatch's input and label tensors (refilled when the
    /// next batch has the same size).
    batch_tensors: Option<(Tensor, Tensor)>,
    /// A minibatch gathered ahead of its call ([`Oracle::stage_batch`]):
    /// its sample indices and tensors, used only by a call listing exactly
    /// those samples (then swapped with `batch_tensors`).
    staged: Option<(Vec<u32>, (Tensor, Tensor))>,
    /// Calls that found their minibatch staged.
    staged_hits: u64,
    /// Parameter tensors shared with the other oracles of the group
    /// ([`NetworkOracle::group`]), used at the broadcast model.
    share: Option<Arc<SharedParams>>,
    /// The broadcast model last announced by [`Oracle::at_model`] (held
    /// only with a `share`).
    told: Option<Arc<Vec<f64>>>,
}

/// Parameter tensors shared by the network oracles of one process: the
/// model the server broadcasts is converted to candle's f32 tensors once per
/// round for all the workers instead of once per worker (with n = 10 workers
/// of a 200k-parameter MLP that is nine fewer passes over x per round).
///
/// The current tensor set is recorded with the model it holds, as an `Arc`
/// handle that keeps that model alive and therefore unchanged; an oracle
/// uses it only for a call whose `x` is the very buffer of the model its
/// worker announced ([`Oracle::at_model`]). No lock is held while candle
/// computes (candle's own threads may run other workers' jobs meanwhile):
/// the mutex only guards the swap, a caller computes with its own `Arc`
/// clone of the tensor set, and a set is refilled for a new model only when
/// nobody holds such a clone (two sets alternate; a third is made if both
/// are in use). So the tensors of a call always hold exactly its x: results
/// are bit for bit those of per-oracle tensors.
#[derive(Debug, Default)]
struct SharedParams {
    slots: Mutex<SharedSlots>,
}

/// A set of parameter tensors, shared by the calls computing with it.
type TensorSet = Arc<Vec<Var>>;

#[derive(Debug, Default)]
struct SharedSlots {
    /// The model the current tensor set holds, and that set.
    current: Option<(Arc<Vec<f64>>, TensorSet)>,
    /// The previous set, reused for the next model once nobody computes
    /// with it.
    spare: Option<TensorSet>,
}

impl SharedParams {
    /// A tensor set holding `model`: the current one, or one refilled (or
    /// made) for it.
    fn holding(
        &self,
        model: &Arc<Vec<f64>>,
        spec: &Network,
        precision: Precision,
        device: &Device,
    ) -> candle_core::Result<TensorSet> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((m, vars)) = &slots.current {
            if Arc::ptr_eq(m, model) {
                return Ok(Arc::clone(vars));
            }
        }
        let old = slots.current.take().map(|(_, vars)| vars);
        // a set nobody computes with (only this struct holds it)
        let free =
            |v: &Option<Arc<Vec<Var>>>| v.as_ref().is_some_and(|v| Arc::strong_count(v) == 1);
        let (reuse, keep) = if free(&slots.spare) {
            (slots.spare.take(), old)
        } else if free(&old) {
            (old, slots.spare.take())
        } else {
            (None, old.or(slots.spare.take()))
        };
        let vars = match reuse {
            Some(vars) => {
                refill(&vars, model)?;
                vars
            }
            None => Arc::new(make_params(spec, model, precision, device)?),
        };
        slots.spare = keep;
        slots.current = Some((Arc::clone(model), Arc::clone(&vars)));
        Ok(vars)
    }
}

/// Writes x into the parameter tensors `vars` (in place).
fn refill(vars: &[Var], x: &[f64]) -> candle_core::Result<()> {
    let mut off = 0;
    for v in vars {
        let n = v.elem_count();
        v.as_tensor()
            .inplace_op1(&fill_from_f64(&x[off..off + n]))?;
        off += n;
    }
    Ok(())
}

impl Clone for NetworkOracle {
    /// A clone gets its own tensors: candle tensors share their buffers
    /// when cloned, and two workers refilling one buffer would compute with
    /// each other's parameters.
    fn clone(&self) -> Self {
        NetworkOracle {
            spec: self.spec.clone(),
            data: self.data.clone(),
            precision: self.precision,
            chunk: self.chunk,
            device: self.device.clone(),
            params: None,
            batch_tensors: None,
            staged: None,
            staged_hits: 0,
            share: None,
            told: None,
        }
    }
}

impl NetworkOracle {
    /// The oracle of `spec` on `data` (pixels must match the input width).
    pub fn new(
        spec: Network,
        data: DenseImages,
        precision: Precision,
    ) -> Result<Self, NetworkError> {
        if data.features != spec.inputs() {
            return Err(NetworkError::Data(format!(
                "images have {} pixels, the network {} inputs",
                data.features,
                spec.inputs()
            )));
        }
        if data.n == 0 {
            return Err(NetworkError::Data("no images".into()));
        }
        if let Some(j) = data
            .labels
            .iter()
            .position(|&y| y as usize >= spec.classes())
        {
            return Err(NetworkError::Data(format!(
                "image {j} has label {} but the network has {} classes",
                data.labels[j],
                spec.classes()
            )));
        }
        Ok(NetworkOracle {
            chunk: spec.eval_chunk(),
            spec,
            data,
            precision,
            device: Device::Cpu,
            params: None,
            batch_tensors: None,
            staged: None,
            staged_hits: 0,
            share: None,
            told: None,
        })
    }

    /// The oracles of one process's workers, one per shard, sharing their
    /// parameter tensors at the broadcast model (see [`Oracle::at_model`]):
    /// the same gradients as separate [`NetworkOracle::new`]s, bit for bit,
    /// with one conversion of the model per round instead of one per worker.
    pub fn group(
        spec: &Network,
        shards: impl IntoIterator<Item = DenseImages>,
        precision: Precision,
    ) -> Result<Vec<Self>, NetworkError> {
        let share = Arc::new(SharedParams::default());
        shards
            .into_iter()
            .map(|s| {
                let mut o = NetworkOracle::new(spec.clone(), s, precision)?;
                o.share = Some(Arc::clone(&share));
                Ok(o)
            })
            .collect()
    }

    /// The network.
    pub fn spec(&self) -> &Network {
        &self.spec
    }

    /// The shard.
    pub fn data(&self) -> &DenseImages {
        &self.data
    }

    /// The parameter tensors of x, as candle variables: this oracle's own
    /// variables, refilled in place.
    fn params(&mut self, x: &[f64]) -> candle_core::Result<Vec<Var>> {
        assert_eq!(x.len(), self.spec.dim(), "parameter vector length");
        match &self.params {
            Some(vars) => refill(vars, x)?,
            None => self.params = Some(make_params(&self.spec, x, self.precision, &self.device)?),
        }
        // clones share the buffers: cheap, and dropped before the next refill
        Ok(self.params.clone().expect("set above"))
    }

    /// Loss of the samples `idx` at x; their mean gradient goes to `sink`.
    fn indexed_grad_with(
        &mut self,
        x: &[f64],
        idx: &[u32],
        sink: &mut dyn FnMut(usize, GradPiece<'_>),
    ) -> f64 {
        // at the announced broadcast model: the group's shared tensors
        if let (Some(share), Some(model)) = (self.share.clone(), self.told.clone()) {
            if model.as_ptr() == x.as_ptr() && model.len() == x.len() {
                let params = share
                    .holding(&model, &self.spec, self.precision, &self.device)
                    .expect(SHAPES);
                // no lock held while candle computes
                return self
                    .eval_rows(&params, Rows::Listed(idx), Some(sink))
                    .expect(SHAPES);
            }
        }
        let params = self.params(x).expect(SHAPES);
        self.eval_rows(&params, Rows::Listed(idx), Some(sink))
            .expect(SHAPES)
    }

    /// How many stochastic gradient calls found their minibatch already
    /// gathered by [`Oracle::stage_batch`].
    pub fn staged_hits(&self) -> u64 {
        self.staged_hits
    }

    /// The batch `rows` as an input tensor and a label tensor: the staged
    /// tensors when they hold exactly these rows, else the tensors of the
    /// previous batch refilled in place when it had as many rows.
    fn batch(&mut self, rows: Rows<'_>) -> candle_core::Result<(Tensor, Tensor)> {
        if let (Rows::Listed(idx), Some((staged_idx, _))) = (rows, &self.staged) {
            if !idx.is_empty() && staged_idx.as_slice() == idx {
                let (mut spare_idx, tensors) = self.staged.take().expect("matched above");
                spare_idx.clear();
                // the displaced tensors become the next staging buffers
                self.staged = self
                    .batch_tensors
                    .replace(tensors)
                    .map(|spare| (spare_idx, spare));
                self.staged_hits += 1;
                return Ok(self.batch_tensors.clone().expect("set above"));
            }
        }
        let reuse = self.batch_tensors.take();
        let tensors = self.gather(rows, reuse)?;
        self.batch_tensors = Some(tensors.clone());
        Ok(tensors)
    }

    /// The batch `rows` written into `reuse` when it has as many rows, else
    /// into new tensors.
    fn gather(
        &self,
        rows: Rows<'_>,
        reuse: Option<(Tensor, Tensor)>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let m = rows.len();
        let f = self.data.features;
        let (input, labels) = match reuse {
            Some((input, labels)) if input.dim(0)? == m => (input, labels),
            _ => (
                Tensor::zeros((m, f), self.precision.dtype(), &self.device)?,
                Tensor::zeros(m, DType::U32, &self.device)?,
            ),
        };
        let data = &self.data;
        input.inplace_op1(&InPlace(|storage: &mut CpuStorage| {
            match storage {
                CpuStorage::F32(v) => {
                    for r in 0..m.min(GATHER_AHEAD) {
                        data.prefetch_row(rows.get(r));
                    }
                    for (r, dst) in v.chunks_exact_mut(f).enumerate() {
                        if r + GATHER_AHEAD < m {
                            data.prefetch_row(rows.get(r + GATHER_AHEAD));
                        }
                        data.pixels_into(rows.get(r), dst);
                    }
                }
                CpuStorage::F64(v) => {
                    for (r, dst) in v.chunks_exact_mut(f).enumerate() {
                        for (d, &p) in dst.iter_mut().zip(data.row(rows.get(r))) {
                            *d = f64::from(LEVELS[p as usize]);
                        }
                    }
                }
                _ => candle_core::bail!("batch input: unexpected dtype"),
            }
            Ok(())
        }))?;
        labels.inplace_op1(&InPlace(|storage: &mut CpuStorage| {
            let CpuStorage::U32(v) = storage else {
                candle_core::bail!("batch labels: unexpected dtype")
            };
            for (r, y) in v.iter_mut().enumerate() {
                *y = data.labels[rows.get(r)];
            }
            Ok(())
        }))?;
        Ok((input, labels))
    }

    /// Mean loss over `rows`; with a `sink`, also hands it the mean
    /// gradient over `rows`, tensor by tensor ([`visit_grads`]).
    fn eval_rows(
        &mut self,
        params: &[Var],
        rows: Rows<'_>,
        sink: Option<&mut GradSink<'_>>,
    ) -> candle_core::Result<f64> {
        let (input, labels) = self.batch(rows)?;
        let (value, store) = self
            .spec
            .forward_backward(params, &input, &labels, sink.is_some())?;
        if let (Some(sink), Some(store)) = (sink, store) {
            visit_grads(params, &store, sink)?;
        }
        Ok(value)
    }

    /// Loss and (optionally) gradient of the mean over the whole shard, in
    /// chunks of `self.chunk` samples weighted by their share.
    fn full(&mut self, x: &[f64], mut grad: Option<&mut [f64]>) -> f64 {
        let params = self.params(x).expect(SHAPES);
        let n = self.data.n;
        let mut loss = 0.0;
        let mut a = 0;
        while a < n {
            let b = (a + self.chunk).min(n);
            let w = (b - a) as f64 / n as f64;
            let first = a == 0;
            let l = match grad.as_deref_mut() {
                Some(g) => {
                    // the first chunk writes, the others add
                    let mut sink = |off: usize, piece: GradPiece<'_>| {
                        let dst = &mut g[off..off + piece.len()];
                        match (piece, first) {
                            (GradPiece::F32(v), true) => set_scaled(dst, v, w),
                            (GradPiece::F32(v), false) => add_scaled(dst, v, w),
                            (GradPiece::F64(v), true) => set_scaled(dst, v, w),
                            (GradPiece::F64(v), false) => add_scaled(dst, v, w),
                        }
                    };
                    self.eval_rows(&params, Rows::Range(a, b), Some(&mut sink))
                }
                None => self.eval_rows(&params, Rows::Range(a, b), None),
            }
            .expect(SHAPES);
            loss += w * l;
            a = b;
        }
        loss
    }

    /// Mean loss and accuracy of the parameters x on `data` (e.g. the test
    /// set), forward passes only, in chunks of [`Network::eval_chunk`] images.
    pub fn evaluate(
        spec: &Network,
        x: &[f64],
        data: &DenseImages,
        precision: Precision,
    ) -> Result<(f64, f64), NetworkError> {
        if data.features != spec.inputs() || data.n == 0 {
            return Err(NetworkError::Data(format!(
                "{} images of {} pixels for a network with {} inputs",
                data.n,
                data.features,
                spec.inputs()
            )));
        }
        let device = Device::Cpu;
        let params = make_params(spec, x, precision, &device).expect(SHAPES);
        let (mut loss, mut correct) = (0.0, 0usize);
        let mut a = 0;
        while a < data.n {
            let b = (a + spec.eval_chunk()).min(data.n);
            let f = data.features;
            let input = Tensor::from_vec(data.pixel_values(a, b), (b - a, f), &device)
                .and_then(|t| t.to_dtype(precision.dtype()))
                .expect(SHAPES);
            let labels = Tensor::from_slice(&data.labels[a..b], b - a, &device).expect(SHAPES);
            let logits = spec.forward(&params, &input).expect(SHAPES);
            let l = candle_nn::loss::cross_entropy(&logits, &labels)
                .and_then(|t| t.to_dtype(DType::F64)?.to_scalar::<f64>())
                .expect(SHAPES);
            loss += l * (b - a) as f64;
            let pred = logits
                .argmax(1)
                .and_then(|t| t.to_vec1::<u32>())
                .expect(SHAPES);
            correct += pred
                .iter()
                .zip(&data.labels[a..b])
                .filter(|(p, y)| p == y)
                .count();
            a = b;
        }
        Ok((loss / data.n as f64, correct as f64 / data.n as f64))
    }
}

/// dst = weight * src.
fn set_scaled<T: Copy + Into<f64>>(dst: &mut [f64], src: &[T], weight: f64) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = weight * s.into();
    }
}

/// dst += weight * src.
fn add_scaled<T: Copy + Into<f64>>(dst: &mut [f64], src: &[T], weight: f64) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += weight * s.into();
    }
}

/// Hands `sink` the gradient of every parameter, in the flat order of x,
/// read from candle's CPU buffers in place (a copy only for a
/// non-contiguous tensor).
fn visit_grads(
    params: &[Var],
    store: &GradStore,
    sink: &mut GradSink<'_>,
) -> candle_core::Result<()> {
    let mut off = 0;
    for p in params {
        let t = store
            .get(p.as_tensor())
            .expect("every parameter takes part in the loss");
        let n = t.elem_count();
        {
            let (storage, layout) = t.storage_and_layout();
            if let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
                let piece = match cpu {
                    CpuStorage::F32(v) => Some(GradPiece::F32(&v[a..b])),
                    CpuStorage::F64(v) => Some(GradPiece::F64(&v[a..b])),
                    _ => None,
                };
                if let Some(piece) = piece {
                    debug_assert_eq!(piece.len(), n);
                    sink(off, piece);
                    off += n;
                    continue;
                }
            }
        } // the storage lock is released before the copying fallback
        let flat = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        sink(off, GradPiece::F64(&flat));
        off += n;
    }
    Ok(())
}

/// An in-place write into a contiguous CPU tensor (candle's in-place custom
/// op): refills a tensor without allocating a new one.
struct InPlace<F>(F);

impl<F: Fn(&mut CpuStorage) -> candle_core::Result<()>> InplaceOp1 for InPlace<F> {
    fn name(&self) -> &'static str {
        "efkit-refill"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        if layout.contiguous_offsets() != Some((0, layout.shape().elem_count())) {
            candle_core::bail!("efkit-refill: the tensor is not a whole contiguous buffer")
        }
        (self.0)(storage)
    }
}

/// The in-place op writing the parameter values `src` (rounded to f32 for
/// an f32 tensor) into a tensor with as many entries.
fn fill_from_f64(src: &[f64]) -> InPlace<impl Fn(&mut CpuStorage) -> candle_core::Result<()> + '_> {
    InPlace(move |storage: &mut CpuStorage| {
        match storage {
            CpuStorage::F32(v) if v.len() == src.len() => {
                for (d, &s) in v.iter_mut().zip(src) {
                    *d = s as f32;
                }
            }
            CpuStorage::F64(v) if v.len() == src.len() => v.copy_from_slice(src),
            _ => candle_core::bail!("parameter refill: dtype or length mismatch"),
        }
        Ok(())
    })
}

/// The parameter tensors of x as candle variables. Each tensor's buffer is
/// filled directly from x (converted to f32 when asked) and handed to candle
/// without a second copy.
fn make_params(
    net: &Network,
    x: &[f64],
    precision: Precision,
    device: &Device,
) -> candle_core::Result<Vec<Var>> {
    assert_eq!(x.len(), net.dim(), "parameter vector length");
    let mut vars = Vec::with_capacity(2 * net.layers.len());
    let mut off = 0;
    for shape in net.shapes() {
        let len: usize = shape.iter().product();
        let src = &x[off..off + len];
        let v = match precision {
            Precision::F32 => Var::from_vec(
                src.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
                shape,
                device,
            )?,
            Precision::F64 => Var::from_slice(src, shape, device)?,
        };
        vars.push(v);
        off += len;
    }
    Ok(vars)
}

const SHAPES: &str = "network tensors: shapes are fixed and checked at construction";

impl Oracle for NetworkOracle {
    fn dim(&self) -> usize {
        self.spec.dim()
    }

    fn num_samples(&self) -> Option<usize> {
        Some(self.data.n)
    }

    fn blocks(&self) -> Option<Vec<usize>> {
        Some(self.spec.blocks())
    }

    fn at_model(&mut self, x: &Arc<Vec<f64>>) {
        if self.share.is_some() {
            self.told = Some(Arc::clone(x));
        }
    }

    fn stage_batch(&mut self, batch: usize, rng: &mut Rng) {
        if batch == 0 || batch > self.data.n {
            return;
        }
        let (mut idx, reuse) = match self.staged.take() {
            Some((idx, tensors)) => (idx, Some(tensors)),
            None => (Vec::with_capacity(batch), None),
        };
        sample_without_replacement(self.data.n, batch, rng, &mut idx);
        // the gather reads only the shard, so a failure just leaves nothing staged
        if let Ok(tensors) = self.gather(Rows::Listed(&idx), reuse) {
            self.staged = Some((idx, tensors));
        }
    }

    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        self.full(x, Some(grad))
    }

    fn loss(&mut self, x: &[f64]) -> f64 {
        self.full(x, None)
    }

    fn stochastic_grad(
        &mut self,
        x: &[f64],
        batch: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        grad: &mut [f64],
    ) -> f64 {
        sample_without_replacement(self.data.n, batch, rng, drawn);
        self.indexed_grad(x, drawn, grad)
    }

    fn stochastic_grad_with(
        &mut self,
        x: &[f64],
        batch: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        _buf: &mut [f64],
        sink: &mut dyn FnMut(usize, GradPiece<'_>),
    ) -> f64 {
        sample_without_replacement(self.data.n, batch, rng, drawn);
        self.indexed_grad_with(x, drawn, sink)
    }

    fn indexed_grad(&mut self, x: &[f64], idx: &[u32], grad: &mut [f64]) -> f64 {
        self.indexed_grad_with(x, idx, &mut |off, piece| {
            piece.write_to(&mut grad[off..off + piece.len()]);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    fn tiny_data(n: usize, features: usize, classes: u32, seed: u64) -> DenseImages {
        let mut rng = stream(seed, Purpose::Setup, 0, 0);
        DenseImages {
            n,
            features,
            pixels: (0..n * features).map(|_| rng.gen()).collect(),
            labels: (0..n).map(|_| rng.gen_range(0..classes)).collect(),
        }
    }

    /// The same network written out by hand in f64 (no candle): mean loss.
    /// Activations are flat, channel-major (channel, row, column).
    fn reference_loss(spec: &Network, x: &[f64], data: &DenseImages) -> f64 {
        let mut total = 0.0;
        let last = spec.layers().len() - 1;
        for j in 0..data.n {
            let mut h: Vec<f64> = data
                .row(j)
                .iter()
                .map(|&p| f64::from(LEVELS[p as usize]))
                .collect();
            let mut off = 0;
            for (l, layer) in spec.layers().iter().enumerate() {
                let mut z = match *layer {
                    Layer::Dense { inputs, outputs } => {
                        let w = &x[off..off + inputs * outputs];
                        let b = &x[off + inputs * outputs..off + inputs * outputs + outputs];
                        off += inputs * outputs + outputs;
                        (0..outputs)
                            .map(|o| {
                                b[o] + (0..inputs).map(|k| w[o * inputs + k] * h[k]).sum::<f64>()
                            })
                            .collect::<Vec<f64>>()
                    }
                    Layer::Conv {
                        channels_in: ci,
                        channels_out: co,
                        kernel: k,
                        side: s,
                    } => {
                        let w = &x[off..off + co * ci * k * k];
                        let b = &x[off + co * ci * k * k..off + co * ci * k * k + co];
                        off += co * ci * k * k + co;
                        let t = s - k + 1;
                        let mut z = vec![0.0; co * t * t];
                        for o in 0..co {
                            for r in 0..t {
                                for c in 0..t {
                                    let mut acc = b[o];
                                    for ch in 0..ci {
                                        for p in 0..k {
                                            for q in 0..k {
                                                acc += w[((o * ci + ch) * k + p) * k + q]
                                                    * h[(ch * s + r + p) * s + c + q];
                                            }
                                        }
                                    }
                                    z[(o * t + r) * t + c] = acc;
                                }
                            }
                        }
                        z
                    }
                };
                if l < last {
                    z.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                if let Layer::Conv {
                    channels_out: co,
                    kernel: k,
                    side: s,
                    ..
                } = *layer
                {
                    let t = s - k + 1;
                    let u = t / 2;
                    let mut pooled = vec![0.0; co * u * u];
                    for o in 0..co {
                        for r in 0..u {
                            for c in 0..u {
                                let at = |rr: usize, cc: usize| z[(o * t + rr) * t + cc];
                                pooled[(o * u + r) * u + c] = 0.25
                                    * (at(2 * r, 2 * c)
                                        + at(2 * r, 2 * c + 1)
                                        + at(2 * r + 1, 2 * c)
                                        + at(2 * r + 1, 2 * c + 1));
                            }
                        }
                    }
                    z = pooled;
                }
                h = z;
            }
            let m = h.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + h.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            total += lse - h[data.labels[j] as usize];
        }
        total / data.n as f64
    }

    #[test]
    fn spec_layout_and_validation() {
        let s = Network::mlp(&[784, 256, 10]).unwrap();
        assert_eq!(s.blocks(), vec![784 * 256, 256, 2560, 10]);
        assert_eq!(s.dim(), 203_530);
        let x = s.init(3);
        assert_eq!(x.len(), s.dim());
        assert!(x[..784 * 256].iter().all(|v| v.abs() < 1.0 / 28.0));
        assert!(x[784 * 256 + 256..].iter().any(|v| v.abs() > 1.0 / 28.0));
        assert_eq!(x, s.init(3));
        assert_ne!(x, s.init(4));
        assert!(Network::mlp(&[5]).is_err());
        assert!(Network::mlp(&[5, 0, 3]).is_err());
        assert!(Network::mlp(&[5, 1]).is_err());
        let bad = NetworkOracle::new(s.clone(), tiny_data(3, 5, 2, 1), Precision::F32);
        assert!(matches!(bad, Err(NetworkError::Data(_))));
        let bad = NetworkOracle::new(
            Network::mlp(&[5, 2]).unwrap(),
            tiny_data(3, 5, 3, 1),
            Precision::F32,
        );
        assert!(matches!(bad, Err(NetworkError::Data(m)) if m.contains("label")));
        // the MNIST CNN: 28 -> 24 -> 12 -> 8 -> 4, then 16 * 16 = 256 inputs
        let c = Network::cnn(28, &[8, 16], 5, &[64], 10).unwrap();
        assert_eq!(
            c.blocks(),
            vec![8 * 25, 8, 16 * 8 * 25, 16, 256 * 64, 64, 640, 10]
        );
        assert_eq!(c.dim(), 20_522);
        assert_eq!(c.inputs(), 784);
        assert_eq!(c.classes(), 10);
        let x = c.init(1);
        // conv1 fan-in 25, conv2 200
        assert!(x[..208].iter().all(|v| v.abs() < 0.2) && x[..208].iter().any(|v| v.abs() > 0.15));
        assert!(x[208..208 + 3216]
            .iter()
            .all(|v| v.abs() < 1.0 / 200f64.sqrt()));
        assert!(Network::cnn(28, &[8, 16, 32], 5, &[64], 10).is_err()); // 4x4 left: no 5x5 conv
        assert!(Network::cnn(28, &[], 5, &[64], 10).is_err());
        assert!(Network::cnn(28, &[8], 0, &[64], 10).is_err());
        assert!(Network::cnn(28, &[8], 5, &[64], 1).is_err());
    }

    #[test]
    fn cnn_loss_matches_a_hand_written_network() {
        let spec = Network::cnn(10, &[2, 3], 3, &[4], 3).unwrap();
        let data = tiny_data(5, 100, 3, 3);
        let x = spec.init(2);
        let want = reference_loss(&spec, &x, &data);
        let mut o = NetworkOracle::new(spec.clone(), data.clone(), Precision::F64).unwrap();
        assert!((o.loss(&x) - want).abs() <= 1e-12 * want.abs());
        let mut o32 = NetworkOracle::new(spec, data, Precision::F32).unwrap();
        assert!((o32.loss(&x) - want).abs() <= 1e-5 * want.abs());
    }

    #[test]
    fn loss_matches_a_hand_written_network() {
        let spec = Network::mlp(&[6, 5, 4, 3]).unwrap();
        let data = tiny_data(9, 6, 3, 2);
        let x = spec.init(5);
        let mut o = NetworkOracle::new(spec.clone(), data.clone(), Precision::F64).unwrap();
        let want = reference_loss(&spec, &x, &data);
        let got = o.loss(&x);
        assert!((got - want).abs() <= 1e-12 * want.abs(), "{got} vs {want}");
        // f32 agrees to f32 accuracy
        let mut o32 = NetworkOracle::new(spec, data, Precision::F32).unwrap();
        assert!((o32.loss(&x) - want).abs() <= 1e-5 * want.abs());
    }

    /// The per-thread counter counts this thread's passes only, and the
    /// process-wide counter at least as much.
    #[test]
    fn thread_counter_counts_this_threads_passes() {
        let spec = Network::mlp(&[6, 5, 4, 3]).unwrap();
        let data = tiny_data(9, 6, 3, 2);
        let x = spec.init(5);
        let (mine, other) = std::thread::scope(|sc| {
            let busy = sc.spawn(|| {
                let mut o = NetworkOracle::new(spec.clone(), data.clone(), Precision::F32).unwrap();
                let (t0, g0) = (thread_forward_backward_time(), forward_backward_time());
                assert_eq!(t0, Duration::ZERO, "a fresh thread starts at zero");
                let mut grad = vec![0.0; spec.dim()];
                for _ in 0..3 {
                    o.loss_grad(&x, &mut grad);
                }
                let t = thread_forward_backward_time() - t0;
                assert!(forward_backward_time() - g0 >= t);
                t
            });
            let idle = sc.spawn(thread_forward_backward_time);
            (busy.join().unwrap(), idle.join().unwrap())
        });
        assert!(mine > Duration::ZERO);
        assert_eq!(other, Duration::ZERO);
    }

    #[test]
    fn gradients_match_finite_differences() {
        // a perceptron, and a CNN with two convolutions (10x10 -> 8x8 -> 4x4
        // -> 2x2 -> 1x1) and a hidden dense layer
        for (spec, pixels) in [
            (Network::mlp(&[6, 5, 4, 3]).unwrap(), 6),
            (Network::cnn(10, &[2, 3], 3, &[4], 3).unwrap(), 100),
        ] {
            check_gradient(&spec, &tiny_data(11, pixels, 3, 7));
        }
    }

    fn check_gradient(spec: &Network, data: &DenseImages) {
        let (spec, data) = (spec.clone(), data.clone());
        let mut rng = stream(9, Purpose::Setup, 0, 0);
        // a generic point (no ReLU exactly at its kink)
        let x: Vec<f64> = (0..spec.dim())
            .map(|_| 0.5 * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, &mut rng))
            .collect();
        let mut o = NetworkOracle::new(spec.clone(), data.clone(), Precision::F64).unwrap();
        let mut g = vec![0.0; spec.dim()];
        let f0 = o.loss_grad(&x, &mut g);
        assert!((f0 - reference_loss(&spec, &x, &data)).abs() < 1e-12);
        let h = 1e-6;
        let mut worst: f64 = 0.0;
        let mut xp = x.clone();
        for k in 0..spec.dim() {
            xp[k] = x[k] + h;
            let fp = reference_loss(&spec, &xp, &data);
            xp[k] = x[k] - h;
            let fm = reference_loss(&spec, &xp, &data);
            xp[k] = x[k];
            let fd = (fp - fm) / (2.0 * h);
            worst = worst.max((fd - g[k]).abs() / (1e-3 + g[k].abs()));
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        // the f32 network gives the same gradient to f32 accuracy
        let mut o32 = NetworkOracle::new(spec.clone(), data, Precision::F32).unwrap();
        let mut g32 = vec![0.0; spec.dim()];
        o32.loss_grad(&x, &mut g32);
        let scale = g.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!(g
            .iter()
            .zip(&g32)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * scale));
    }

    #[test]
    fn minibatch_and_chunked_gradients_are_means() {
        let spec = Network::mlp(&[6, 4, 3]).unwrap();
        let data = tiny_data(10, 6, 3, 4);
        let x = spec.init(1);
        let mut o = NetworkOracle::new(spec.clone(), data.clone(), Precision::F64).unwrap();
        let d = spec.dim();
        let mut full = vec![0.0; d];
        let l_full = o.loss_grad(&x, &mut full);
        // chunks of 3 samples give the same mean
        o.chunk = 3;
        let mut chunked = vec![0.0; d];
        let l_chunked = o.loss_grad(&x, &mut chunked);
        assert!((l_full - l_chunked).abs() < 1e-14);
        assert!(full
            .iter()
            .zip(&chunked)
            .all(|(a, b)| (a - b).abs() < 1e-14));
        // the mean of the ten one-sample gradients is the full gradient
        let mut mean = vec![0.0; d];
        let mut one = vec![0.0; d];
        for j in 0..10u32 {
            o.indexed_grad(&x, &[j], &mut one);
            mean.iter_mut().zip(&one).for_each(|(m, v)| *m += v / 10.0);
        }
        assert!(full.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 1e-14));
        // a minibatch draw is reproducible and reports its indices
        let (mut d1, mut d2) = (Vec::new(), Vec::new());
        let (mut g1, mut g2) = (vec![0.0; d], vec![0.0; d]);
        o.stochastic_grad(
            &x,
            4,
            &mut stream(1, Purpose::Sample, 0, 3),
            &mut d1,
            &mut g1,
        );
        o.stochastic_grad(
            &x,
            4,
            &mut stream(1, Purpose::Sample, 0, 3),
            &mut d2,
            &mut g2,
        );
        assert_eq!((d1.len(), &d1), (4, &d2));
        assert_eq!(g1, g2);
        let mut g3 = vec![0.0; d];
        o.indexed_grad(&x, &d1, &mut g3);
        assert_eq!(g1, g3);
    }

    #[test]
    fn gradient_pieces_are_the_written_gradient() {
        let spec = Network::mlp(&[6, 5, 3]).unwrap();
        let data = tiny_data(20, 6, 3, 8);
        let x = spec.init(2);
        let d = spec.dim();
        for precision in [Precision::F32, Precision::F64] {
            let mut o = NetworkOracle::new(spec.clone(), data.clone(), precision).unwrap();
            let mut want = vec![0.0; d];
            let mut drawn_a = Vec::new();
            let la = o.stochastic_grad(
                &x,
                7,
                &mut stream(4, Purpose::Sample, 0, 1),
                &mut drawn_a,
                &mut want,
            );
            // pieces in order, covering 0..d once, equal to the written gradient
            let mut got = vec![f64::NAN; d];
            let mut next = 0;
            let mut drawn_b = Vec::new();
            let lb = o.stochastic_grad_with(
                &x,
                7,
                &mut stream(4, Purpose::Sample, 0, 1),
                &mut drawn_b,
                &mut [],
                &mut |off, piece| {
                    assert_eq!(off, next);
                    assert_eq!(
                        matches!(piece, GradPiece::F32(_)),
                        precision == Precision::F32
                    );
                    piece.write_to(&mut got[off..off + piece.len()]);
                    next = off + piece.len();
                },
            );
            assert_eq!(next, d);
            assert_eq!(drawn_a, drawn_b);
            assert_eq!(la.to_bits(), lb.to_bits());
            assert!(want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    #[test]
    fn clones_and_reused_tensors_do_not_leak_between_calls() {
        let spec = Network::mlp(&[6, 4, 3]).unwrap();
        let data = tiny_data(12, 6, 3, 5);
        let d = spec.dim();
        let (x1, x2) = (spec.init(1), spec.init(2));
        let fresh = |x: &[f64], rows: &[u32]| {
            let mut g = vec![0.0; d];
            let mut o = NetworkOracle::new(spec.clone(), data.clone(), Precision::F32).unwrap();
            let l = o.indexed_grad(x, rows, &mut g);
            (l, g)
        };
        // one oracle and its clone, called in turn at different points and
        // batches (the refilled parameter and batch tensors of one must not
        // show up in the other, nor stale values in the next call)
        let mut a = NetworkOracle::new(spec.clone(), data.clone(), Precision::F32).unwrap();
        a.indexed_grad(&x1, &[0, 1, 2], &mut vec![0.0; d]);
        let mut b = a.clone();
        b.indexed_grad(&x2, &[0], &mut vec![0.0; d]);
        // the clone refilled its own parameters, not a's
        let w1 = a.params.as_ref().unwrap()[0]
            .as_tensor()
            .flatten_all()
            .unwrap();
        let want: Vec<f32> = x1[..w1.elem_count()].iter().map(|&v| v as f32).collect();
        assert_eq!(w1.to_vec1::<f32>().unwrap(), want);
        for (which, x, rows) in [
            (0, &x1, &[3u32, 4, 5][..]),
            (1, &x2, &[0, 7, 9][..]),
            (0, &x2, &[1, 2][..]),
            (1, &x1, &[3, 4, 5][..]),
        ] {
            let o = if which == 0 { &mut a } else { &mut b };
            let mut g = vec![0.0; d];
            let l = o.indexed_grad(x, rows, &mut g);
            assert_eq!((l, g), fresh(x, rows));
        }
        // the full gradient (chunked) after minibatches, and minibatches after it
        a.chunk = 5;
        let mut full = vec![0.0; d];
        let lf = a.loss_grad(&x1, &mut full);
        let mut o = NetworkOracle::new(spec.clone(), data.clone(), Precision::F32).unwrap();
        o.chunk = 5;
        let mut want = vec![0.0; d];
        assert_eq!((lf, full), (o.loss_grad(&x1, &mut want), want));
        let mut g = vec![0.0; d];
        let l = a.indexed_grad(&x2, &[8, 9], &mut g);
        assert_eq!((l, g), fresh(&x2, &[8, 9]));
    }

    /// A group's oracles share the parameter tensors at the announced model
    /// and compute exactly what separate oracles compute: at the announced
    /// model (converted once, by whichever oracle comes first), after a new
    /// model is announced (refilled), at a point that is not the announced
    /// model (private tensors, shared ones untouched), and from two threads
    /// at once.
    #[test]
    fn group_oracles_share_the_model_tensors_and_compute_the_same() {
        let spec = Network::mlp(&[6, 4, 3]).unwrap();
        let data = tiny_data(24, 6, 3, 9);
        let d = spec.dim();
        let shards = data
            .shards(2, efkit_problems::split::SplitKind::Contiguous, 0)
            .unwrap();
        let fresh = |w: usize, x: &[f64], rows: &[u32]| {
            let mut g = vec![0.0; d];
            let mut o =
                NetworkOracle::new(spec.clone(), shards[w].clone(), Precision::F32).unwrap();
            let l = o.indexed_grad(x, rows, &mut g);
            (l, g)
        };
        let mut group = NetworkOracle::group(&spec, shards.clone(), Precision::F32).unwrap();
        let share = group[0].share.clone().unwrap();
        let (m1, m2) = (Arc::new(spec.init(1)), Arc::new(spec.init(2)));
        for m in [&m1, &m2, &m1] {
            group.iter_mut().for_each(|o| o.at_model(m));
            for (w, o) in group.iter_mut().enumerate() {
                let mut g = vec![0.0; d];
                let l = o.indexed_grad(m, &[1, 4, 7], &mut g);
                assert_eq!((l, g), fresh(w, m, &[1, 4, 7]));
                // the shared tensors hold the announced model; no private ones
                assert!(o.params.is_none());
            }
            let slots = share.slots.lock().unwrap();
            assert!(Arc::ptr_eq(&slots.current.as_ref().unwrap().0, m));
        }
        // a point equal in value but another buffer, and another point:
        // private tensors, the shared ones keep the announced model
        let copy = m1.to_vec();
        let x3 = spec.init(3);
        for x in [&copy, &x3] {
            let mut g = vec![0.0; d];
            let l = group[1].indexed_grad(x, &[0, 2], &mut g);
            assert_eq!((l, g), fresh(1, x, &[0, 2]));
        }
        assert!(group[1].params.is_some());
        let mut g = vec![0.0; d];
        let l = group[0].indexed_grad(&m1, &[5], &mut g);
        assert_eq!((l, g), fresh(0, &m1, &[5]));
        // two threads at once, a new model each time
        for seed in 10..14 {
            let m = Arc::new(spec.init(seed));
            group.iter_mut().for_each(|o| o.at_model(&m));
            let got: Vec<(f64, Vec<f64>)> = std::thread::scope(|sc| {
                let handles: Vec<_> = group
                    .iter_mut()
                    .map(|o| {
                        let m = Arc::clone(&m);
                        sc.spawn(move || {
                            let mut g = vec![0.0; d];
                            let l = o.indexed_grad(&m, &[0, 3, 6, 9], &mut g);
                            (l, g)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (w, r) in got.into_iter().enumerate() {
                assert_eq!(r, fresh(w, &m, &[0, 3, 6, 9]));
            }
        }
        // two threads at two different announced models at once (not what a
        // cluster does, but the API allows it): each computes at its own
        // model, whichever refills first (a third tensor set when both
        // are in use)
        for seed in 20..26 {
            let ms = [Arc::new(spec.init(seed)), Arc::new(spec.init(seed + 100))];
            let got: Vec<(f64, Vec<f64>)> = std::thread::scope(|sc| {
                let handles: Vec<_> = group
                    .iter_mut()
                    .zip(&ms)
                    .map(|(o, m)| {
                        o.at_model(m);
                        sc.spawn(move || {
                            let mut g = vec![0.0; d];
                            let l = o.indexed_grad(m, &[1, 2, 8], &mut g);
                            (l, g)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (w, r) in got.into_iter().enumerate() {
                assert_eq!(r, fresh(w, &ms[w], &[1, 2, 8]));
            }
        }
    }

    /// A minibatch staged for a round's draw gives the very gradient of the
    /// unstaged call; a staged batch the call does not draw is not used.
    #[test]
    fn staged_minibatches_give_the_unstaged_gradients() {
        for precision in [Precision::F32, Precision::F64] {
            staged_minibatches_in(precision);
        }
    }

    fn staged_minibatches_in(precision: Precision) {
        let spec = Network::mlp(&[6, 4, 3]).unwrap();
        let data = tiny_data(40, 6, 3, 5);
        let d = spec.dim();
        let x = spec.init(7);
        let fresh = || NetworkOracle::new(spec.clone(), data.clone(), precision).unwrap();
        let call = |o: &mut NetworkOracle, round: u64, batch: usize| {
            let mut g = vec![0.0; d];
            let mut drawn = Vec::new();
            let mut rng = stream(3, Purpose::Sample, 0, round);
            let l = o.stochastic_grad(&x, batch, &mut rng, &mut drawn, &mut g);
            (l, g, drawn)
        };
        // the same call on an oracle that never staged anything
        let plain = |round: u64, batch: usize| call(&mut fresh(), round, batch);
        let mut o = fresh();
        // staged for the round it is drawn in: used, same values
        for round in 0..3 {
            o.stage_batch(8, &mut stream(3, Purpose::Sample, 0, round));
            assert_eq!(call(&mut o, round, 8), plain(round, 8));
            assert_eq!(o.staged_hits(), round + 1);
        }
        // staged for another round, or another batch size: not used
        o.stage_batch(8, &mut stream(3, Purpose::Sample, 0, 9));
        assert_eq!(call(&mut o, 4, 8), plain(4, 8));
        o.stage_batch(5, &mut stream(3, Purpose::Sample, 0, 5));
        assert_eq!(call(&mut o, 5, 8), plain(5, 8));
        assert_eq!(o.staged_hits(), 3);
        // a size change between staging and use, both ways
        o.stage_batch(5, &mut stream(3, Purpose::Sample, 0, 6));
        assert_eq!(call(&mut o, 6, 5), plain(6, 5));
        o.stage_batch(8, &mut stream(3, Purpose::Sample, 0, 7));
        assert_eq!(call(&mut o, 7, 8), plain(7, 8));
        assert_eq!(o.staged_hits(), 5);
        // a batch the shard cannot hold is not staged (the call reports it)
        o.stage_batch(41, &mut stream(3, Purpose::Sample, 0, 8));
        assert_eq!(call(&mut o, 8, 8), plain(8, 8));
        assert_eq!(o.staged_hits(), 5);
    }

    #[test]
    fn evaluate_counts_correct_predictions() {
        let spec = Network::mlp(&[2, 2]).unwrap();
        // a linear classifier: class = argmax(x_0 - x_1, x_1 - x_0)
        let x = vec![1.0, -1.0, -1.0, 1.0, 0.0, 0.0];
        let data = DenseImages {
            n: 4,
            features: 2,
            // pixels 1, 0, 0, 1, 0.902, 0.102, 0.2, 0.8 (levels / 255)
            pixels: vec![255, 0, 0, 255, 230, 26, 51, 204],
            labels: vec![0, 1, 1, 1],
        };
        let (loss, acc) = NetworkOracle::evaluate(&spec, &x, &data, Precision::F64).unwrap();
        assert_eq!(acc, 0.75);
        assert!((loss - reference_loss(&spec, &x, &data)).abs() < 1e-12);
    }
}
