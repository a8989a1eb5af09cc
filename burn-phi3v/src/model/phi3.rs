//! The Phi-3 text decoder (Phi-3-mini body shared by Phi-3-vision and Phi-3.5-vision).
//!
//! Reads top to bottom: rotary embedding → RMSNorm → attention → MLP → decoder layer → model.
//! Reference: `modeling_phi3_v.py` (Phi3RMSNorm, Phi3SuScaledRotaryEmbedding, Phi3Attention,
//! Phi3MLP, Phi3DecoderLayer, Phi3VModel) of microsoft/Phi-3-vision-128k-instruct; spec §2.

use crate::kernels::{self, Kernels};
use burn::tensor::{
    Bool, DType, Int, Tensor, TensorData,
    backend::Backend,
    module::embedding,
};

use crate::config::{RopeScaling, TextConfig};
use crate::error::Result;
use crate::model::nn::Linear;
use crate::model::paged::{PagedBatch, PagedKvCache, PagedLayer, paged_attention};
use crate::weights::Weights;

// ---------------------------------------------------------------------------------------------
// Rotary embedding (LongRoPE "su", YaRN, or plain)
// ---------------------------------------------------------------------------------------------

/// Which LongRoPE factor set a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeRegime {
    /// `short_factor`: the whole pass fits `original_max_position_embeddings`.
    Short,
    /// `long_factor`: some position of the pass is at or beyond it.
    Long,
}

/// Host-side rotary tables, computed in f32 exactly as the reference does.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    head_dim: usize,
    /// `inv_freq` for the short regime (or plain RoPE), `head_dim / 2` values.
    short_inv_freq: Vec<f32>,
    /// `inv_freq` for the long regime; `None` without rope scaling.
    long_inv_freq: Option<Vec<f32>>,
    /// cos/sin multiplier (`scaling_factor` in the reference; 1 without scaling).
    mscale: f32,
    original_max_position_embeddings: usize,
    /// Rows already computed, per regime (short, long): position `p`'s `head_dim / 2` cosines
    /// then sines, times `mscale`, for positions `0..len / head_dim` (at most
    /// [`CACHED_POSITIONS`]). Every pass starts at position 0, so a prefill's rows are
    /// computed once, not per request.
    rows: std::sync::Arc<std::sync::Mutex<[Vec<f32>; 2]>>,
    /// The same rows as device tensors, for the one backend, device and dtype last asked for
    /// (a [`DeviceRows`]; type-erased, as the embedding is not generic over the backend).
    device_rows: std::sync::Arc<std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>>,
}

/// [`RotaryEmbedding`]'s rows on one device in one dtype: per regime (short, long), the
/// `[n, head_dim]` cos and sin tables of positions `0..n`, as [`RotaryEmbedding::tables`] builds
/// them. A pass over consecutive positions (a prefill, a decode step of one sequence, a chunk of
/// one sequence in the engine) takes a slice of them instead of uploading tables from the host.
struct DeviceRows<B: Backend> {
    device: B::Device,
    dtype: DType,
    regimes: [Option<(Tensor<B, 2>, Tensor<B, 2>)>; 2],
}

/// Fewest positions a device table is made with (it grows by powers of two up to
/// [`CACHED_POSITIONS`]).
const DEVICE_ROWS_MIN: usize = 1 << 12;

/// Positions whose rotary rows [`RotaryEmbedding`] keeps (host memory: `2 · head_dim · 4` bytes
/// each per regime, 12 MiB for Phi-3's 96-dim heads); rows past it are computed per call.
pub const CACHED_POSITIONS: usize = 1 << 15;

impl RotaryEmbedding {
    /// Builds the tables for `config`.
    pub fn new(config: &TextConfig) -> Self {
        let head_dim = config.head_dim();
        let base = config.rope_theta as f32;
        // base ** (arange(0, dim, 2).float() / dim), in float32 (torch.pow(scalar, tensor)).
        let powers: Vec<f32> = (0..head_dim / 2)
            .map(|j| base.powf((2 * j) as f32 / head_dim as f32))
            .collect();
        let inv = |factors: &[f32]| -> Vec<f32> {
            powers.iter().zip(factors).map(|(p, f)| 1.0 / (f * p)).collect()
        };
        let scale = config.max_position_embeddings as f64 / config.original_max_position_embeddings as f64;
        let (short_inv_freq, long_inv_freq, mscale) = match &config.rope_scaling {
            RopeScaling::None => (powers.iter().map(|p| 1.0 / p).collect(), None, 1.0),
            RopeScaling::LongRope {
                short_factor,
                long_factor,
            } => {
                let m = if scale <= 1.0 {
                    1.0
                } else {
                    (1.0 + scale.ln() / (config.original_max_position_embeddings as f64).ln()).sqrt()
                };
                (inv(short_factor), Some(inv(long_factor)), m)
            }
            RopeScaling::Yarn {
                short_factor,
                long_factor,
            } => {
                let m = if scale <= 1.0 { 1.0 } else { 0.1 * scale.ln() + 1.0 };
                (inv(short_factor), Some(inv(long_factor)), m)
            }
        };
        Self {
            head_dim,
            short_inv_freq,
            long_inv_freq,
            mscale: mscale as f32,
            original_max_position_embeddings: config.original_max_position_embeddings,
            rows: Default::default(),
            device_rows: Default::default(),
        }
    }

    /// Appends position `p`'s row (its `half` cosines, then its sines, times `mscale`) to `out`.
    fn push_row(&self, inv_freq: &[f32], p: usize, out: &mut Vec<f32>) {
        let half = self.head_dim / 2;
        let angles = inv_freq.iter().take(half).map(|f| f * p as f32);
        out.extend(angles.clone().map(|a| a.cos() * self.mscale));
        out.extend(angles.map(|a| a.sin() * self.mscale));
    }

    /// The regime of a forward pass whose largest position is `max_position` (HF: long iff
    /// `max(position_ids) + 1 > original_max_position_embeddings`).
    pub fn regime(&self, max_position: usize) -> RopeRegime {
        if self.long_inv_freq.is_some() && max_position + 1 > self.original_max_position_embeddings {
            RopeRegime::Long
        } else {
            RopeRegime::Short
        }
    }

    /// cos and sin for `positions[b][s]` with row b in `regimes[b]`, already multiplied by
    /// the attention factor: slices of tables kept on the device where the positions,
    /// row after row, are consecutive in one regime, else built on the host and uploaded.
    ///
    /// # Shapes
    /// → (`[batch, 1, seq, head_dim]`, `[batch, 1, seq, head_dim]`)
    pub fn tables<B: Backend>(
        &self,
        positions: &[Vec<usize>],
        regimes: &[RopeRegime],
        device: &B::Device,
        dtype: DType,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.device_tables(positions, regimes, device, dtype).unwrap_or_else(|| self.host_tables(positions, regimes, device, dtype))
    }

    /// Index of a regime's rows: the long ones only where the config has them.
    fn regime_index(&self, regime: RopeRegime) -> usize {
        usize::from(regime == RopeRegime::Long && self.long_inv_freq.is_some())
    }

    /// [`RotaryEmbedding::tables`] as slices of the device tables; `None` where the positions
    /// are not consecutive in one regime or reach past [`CACHED_POSITIONS`].
    fn device_tables<B: Backend>(&self, positions: &[Vec<usize>], regimes: &[RopeRegime], device: &B::Device, dtype: DType) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        let (batch, seq) = (positions.len(), positions.first()?.len());
        let which = self.regime_index(*regimes.first()?);
        let start = *positions[0].first()?;
        let consecutive = positions.iter().flatten().enumerate().all(|(i, &p)| p == start + i);
        let end = start + batch * seq;
        if !consecutive || positions.iter().any(|ps| ps.len() != seq) || regimes.len() != batch || regimes.iter().any(|&r| self.regime_index(r) != which) || end > CACHED_POSITIONS {
            return None;
        }
        let mut slot = self.device_rows.lock().ok()?;
        if !slot.as_ref().and_then(|rows| rows.downcast_ref::<DeviceRows<B>>()).is_some_and(|rows| rows.device == *device && rows.dtype == dtype) {
            *slot = Some(Box::new(DeviceRows::<B> { device: device.clone(), dtype, regimes: [None, None] }));
        }
        let rows = slot.as_mut()?.downcast_mut::<DeviceRows<B>>()?;
        if rows.regimes[which].as_ref().is_none_or(|(cos, _)| cos.dims()[0] < end) {
            let n = end.next_power_of_two().clamp(DEVICE_ROWS_MIN, CACHED_POSITIONS);
            let regime = if which == 1 { RopeRegime::Long } else { RopeRegime::Short };
            let (cos, sin) = self.host_tables::<B>(&[(0..n).collect()], &[regime], device, dtype);
            rows.regimes[which] = Some((cos.reshape([n, self.head_dim]), sin.reshape([n, self.head_dim])));
        }
        let (cos, sin) = rows.regimes[which].as_ref()?;
        let table = |t: &Tensor<B, 2>| t.clone().slice(start..end).reshape([batch, 1, seq, self.head_dim]);
        Some((table(cos), table(sin)))
    }

    /// [`RotaryEmbedding::tables`] built on the host from the kept rows and uploaded.
    fn host_tables<B: Backend>(&self, positions: &[Vec<usize>], regimes: &[RopeRegime], device: &B::Device, dtype: DType) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let batch = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let (half, width) = (self.head_dim / 2, self.head_dim);
        let mut cos = Vec::with_capacity(batch * seq * width);
        let mut sin = Vec::with_capacity(batch * seq * width);
        let mut cached = self.rows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut row = Vec::with_capacity(width);
        for (ps, regime) in positions.iter().zip(regimes) {
            let (inv_freq, which) = match (regime, &self.long_inv_freq) {
                (RopeRegime::Long, Some(long)) => (long, 1),
                _ => (&self.short_inv_freq, 0),
            };
            // Grow this regime's rows to cover the row's positions (up to the cap).
            let needed = ps.iter().max().map_or(0, |&p| p + 1).min(CACHED_POSITIONS);
            let rows = &mut cached[which];
            for p in rows.len() / width..needed {
                self.push_row(inv_freq, p, rows);
            }
            for &p in ps {
                let r = if p < CACHED_POSITIONS {
                    &rows[p * width..(p + 1) * width]
                } else {
                    row.clear();
                    self.push_row(inv_freq, p, &mut row);
                    &row[..]
                };
                // emb = cat(freqs, freqs): both halves use the same angles.
                let (c, s) = r.split_at(half);
                cos.extend_from_slice(c);
                cos.extend_from_slice(c);
                sin.extend_from_slice(s);
                sin.extend_from_slice(s);
            }
        }
        drop(cached);
        // Uploaded as one row, then viewed as the tables: the rows stay dense. Uploaded as
        // `[.., seq, head_dim]`, CubeCL's CUDA runtime pitches each row to a power of two
        // (96 bf16 values to 128), so that every slice of them failed the rotary kernels'
        // contiguity check and was copied, twice per layer and step (64 launches more in a b=1
        // decode step: docs/kernels.md session 35).
        let shape = [batch, 1, seq, self.head_dim];
        let upload = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [batch * seq * self.head_dim]), (device, dtype)).reshape(shape);
        (upload(cos), upload(sin))
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------

/// `Phi3RMSNorm`: normalise in f32, cast back, then multiply by the weight.
#[derive(Debug, Clone)]
pub struct Phi3RmsNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Tensor<B, 1>,
    /// Epsilon.
    pub eps: f64,
}

impl<B: Kernels> Phi3RmsNorm<B> {
    fn load(w: &Weights<B>, prefix: &str, d: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.tensor(&format!("{prefix}.weight"), [d])?,
            eps,
        })
    }

    /// # Shapes
    /// `[batch, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        kernels::rms_norm(x, &self.weight, self.eps)
    }
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// Keys and values of one layer, after RoPE, in buffers with room to grow: a decode step
/// writes its key and value in place instead of copying the whole cache (`cat`).
///
/// Appending is in place when the buffers are not shared: a cloned cache (a static batch that
/// forks, a benchmark that replays a step) copies on its first append, which keeps clones
/// independent.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// `[batch, kv_heads, capacity, head_dim]`; positions `0..len` are cached.
    k: Tensor<B, 4>,
    /// Same layout as `k`.
    v: Tensor<B, 4>,
    len: usize,
}

/// Positions a [`LayerKv`] buffer grows by (at most this many stay unused).
pub const KV_GROWTH: usize = 256;

impl<B: Backend> LayerKv<B> {
    /// A cache holding `k` and `v` (`[batch, kv_heads, cached, head_dim]`), with room for at
    /// least one more position.
    pub fn new(k: Tensor<B, 4>, v: Tensor<B, 4>) -> Self {
        let [b, n, len, hd] = k.dims();
        let capacity = (len + 1).next_multiple_of(KV_GROWTH);
        let buffer = |t: &Tensor<B, 4>| Tensor::<B, 4>::zeros([b, n, capacity, hd], (&t.device(), t.dtype()));
        let empty = Self { k: buffer(&k), v: buffer(&v), len: 0 };
        empty.append(k, v)
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cached keys, `[batch, kv_heads, len, head_dim]` (a view of the buffer).
    pub fn keys(&self) -> Tensor<B, 4> {
        self.k.clone().narrow(2, 0, self.len)
    }

    /// The cached values, `[batch, kv_heads, len, head_dim]` (a view of the buffer).
    pub fn values(&self) -> Tensor<B, 4> {
        self.v.clone().narrow(2, 0, self.len)
    }

    /// Appends `k` and `v` (`[batch, kv_heads, new, head_dim]`) after the cached positions,
    /// growing the buffers by whole [`KV_GROWTH`] blocks when they are full.
    pub fn append(self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Self {
        let [b, n, new, hd] = k.dims();
        let Self { k: kb, v: vb, len } = self.reserve(new);
        // `slice_assign` writes in place into a buffer nothing else holds.
        let at = [0..b, 0..n, len..len + new, 0..hd];
        Self {
            k: kb.slice_assign(at.clone(), k),
            v: vb.slice_assign(at, v),
            len: len + new,
        }
    }

    /// The same cache with room for `new` more positions: the buffers grow by whole
    /// [`KV_GROWTH`] blocks (the cached positions copied) when they are full.
    fn reserve(self, new: usize) -> Self {
        let [b, n, capacity, hd] = self.k.dims();
        let len = self.len;
        if len + new <= capacity {
            return self;
        }
        let capacity = (len + new).next_multiple_of(KV_GROWTH);
        let grow = |t: Tensor<B, 4>| {
            let buffer = Tensor::<B, 4>::zeros([b, n, capacity, hd], (&t.device(), t.dtype()));
            if len == 0 { buffer } else { buffer.slice_assign([0..b, 0..n, 0..len, 0..hd], t.narrow(2, 0, len)) }
        };
        Self { k: grow(self.k), v: grow(self.v), len }
    }
}

impl<B: Kernels> LayerKv<B> {
    /// Appends the keys and values of `qkv` (a `qkv_proj` output, `[batch, new, (heads +
    /// 2·kv_heads)·head_dim]`) after rotating its queries and keys with `cos`/`sin`
    /// (`[batch, 1, new, head_dim]`): one [`kernels::rotary_append`]. Returns the rotated
    /// queries, `[batch, heads, new, head_dim]`.
    pub fn append_qkv(self, qkv: Tensor<B, 3>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, heads: usize) -> (Tensor<B, 4>, Self) {
        let new = qkv.dims()[1];
        let Self { k, v, len } = self.reserve(new);
        let (q, k, v) = kernels::rotary_append(qkv, cos, sin, k, v, heads, len);
        (q, Self { k, v, len: len + new })
    }
}

/// The attention state a caller keeps between forward passes (one entry per layer).
/// The model appends to it; the caller owns it, sizes it and decides when to drop it.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Per layer; `None` until the first pass.
    pub layers: Vec<Option<LayerKv<B>>>,
    /// The LongRoPE regime each row's cached keys were rotated with (empty until the first pass).
    pub regimes: Vec<RopeRegime>,
}

impl<B: Kernels> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            regimes: Vec::new(),
        }
    }

    /// Cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, LayerKv::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything cached.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.regimes.clear();
    }
}

/// `Phi3Attention`: fused `qkv_proj`, rotary, causal softmax attention, `o_proj`.
#[derive(Debug, Clone)]
pub struct Phi3Attention<B: Backend> {
    /// `[hidden, (heads + 2·kv_heads)·head_dim]`: q rows, then k, then v.
    pub qkv_proj: Linear<B>,
    /// `[heads·head_dim, hidden]`.
    pub o_proj: Linear<B>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl<B: Kernels> Phi3Attention<B> {
    fn load(w: &Weights<B>, prefix: &str, c: &TextConfig) -> Result<Self> {
        let hd = c.head_dim();
        let qkv_out = (c.num_attention_heads + 2 * c.num_key_value_heads) * hd;
        Ok(Self {
            qkv_proj: Linear::load(w, &format!("{prefix}.qkv_proj"), c.hidden_size, qkv_out, false)?,
            o_proj: Linear::load(w, &format!("{prefix}.o_proj"), c.num_attention_heads * hd, c.hidden_size, false)?,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    /// Splits `qkv_proj`'s output into rotated queries, rotated keys and values.
    ///
    /// # Shapes
    /// `qkv`: `[batch, seq, (heads + 2·kv_heads)·head_dim]` → `[batch, heads, seq, head_dim]`,
    /// then twice `[batch, kv_heads, seq, head_dim]`
    fn project(&self, qkv: Tensor<B, 3>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        kernels::rotate_split(qkv, cos, sin, self.num_heads, self.num_kv_heads)
    }

    /// HF's `Phi3Attention`: `o_proj(attention(qkv_proj(x)))`. (The decoder layer runs
    /// [`Self::attend`] between projections fused with its norm and residual add.)
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`; `cos`, `sin`: `[batch, 1, seq, head_dim]`
    /// - `mask`: `[batch, heads, seq, cached + seq]`, `true` = masked; `None` = causal
    /// - → `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: &mut Option<LayerKv<B>>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        self.o_proj.forward(self.attend(self.qkv_proj.forward(x), cos, sin, cache, mask))
    }

    /// The attention between `qkv_proj` and `o_proj`: rotation, cache append, softmax
    /// attention over the cached and new keys.
    ///
    /// # Shapes
    /// - `qkv`: `[batch, seq, (heads + 2·kv_heads)·head_dim]`; `cos`, `sin`, `mask`: as in
    ///   [`Self::forward`]
    /// - → `[batch, seq, heads·head_dim]`
    pub fn attend(
        &self,
        qkv: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: &mut Option<LayerKv<B>>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = qkv.dims();
        let (h, hd) = (self.num_heads, self.head_dim);
        let (q, k, v) = match cache.take() {
            // Rotation, head split and cache append in one step.
            Some(kv) => {
                let (q, kv) = kv.append_qkv(qkv, cos, sin, h);
                let kv = cache.insert(kv);
                (q, kv.keys(), kv.values())
            }
            None => {
                let (q, k, v) = self.project(qkv, cos, sin);
                *cache = Some(LayerKv::new(k.clone(), v.clone()));
                (q, k, v)
            }
        };
        // One new query sees every key (a decode step); several new queries after a cached
        // prefix are causal with an explicit bottom-right mask beside the flag (backends
        // disagree on how the flag alone aligns there; `kernels::attention`).
        let t = k.dims()[2];
        let out = match mask {
            None if s == 1 && t > 1 => kernels::decode_attention(q, k, v),
            mask => {
                let (mask, is_causal) = match mask {
                    Some(m) => (Some(m), false),
                    None if t == s => (None, true),
                    None => (Some(causal_mask::<B>(b, h, s, t, &k.device())), true),
                };
                kernels::attention(q, k, v, mask, is_causal) // key/value heads repeated inside
            }
        }; // [b, h, s, hd]
        // One query row is laid out as [b, s, h, hd] already: a view, no copy.
        if s == 1 { out.reshape([b, s, h * hd]) } else { out.swap_dims(1, 2).reshape([b, s, h * hd]) }
    }

    /// [`Self::attend`] over a paged KV cache: a flat pass of tokens from several sequences
    /// (see [`crate::model::paged`]); their keys and values are written to `cache` first.
    ///
    /// # Shapes
    /// `qkv`: `[1, tokens, (heads + 2·kv_heads)·head_dim]`; `cos`, `sin`: `[1, 1, tokens,
    /// head_dim]` → `[1, tokens, heads·head_dim]`
    pub fn attend_paged(
        &self,
        qkv: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: &mut PagedLayer<B>,
        batch: &PagedBatch<B>,
    ) -> Tensor<B, 3> {
        let t = qkv.dims()[1];
        let (h, hd) = (self.num_heads, self.head_dim);
        let q = cache.rotate_write(batch, qkv, cos, sin, h); // [t, h, hd]
        paged_attention(q, cache, batch).reshape([1, t, h * hd])
    }
}

/// Bottom-right-aligned causal mask (`true` = masked) for `queries` new positions after
/// `keys − queries` cached ones.
pub(crate) fn causal_mask<B: Backend>(b: usize, h: usize, queries: usize, keys: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let offset = keys - queries;
    let m: Vec<bool> = (0..queries).flat_map(|q| (0..keys).map(move |k| k > q + offset)).collect();
    Tensor::<B, 4, Bool>::from_data(TensorData::new(m, [1, 1, queries, keys]), device).expand([b, h, queries, keys])
}

// ---------------------------------------------------------------------------------------------
// MLP
// ---------------------------------------------------------------------------------------------

/// `Phi3MLP`: fused `gate_up_proj` (gate first), `up · silu(gate)`, `down_proj`.
#[derive(Debug, Clone)]
pub struct Phi3Mlp<B: Backend> {
    /// `[hidden, 2·intermediate]`.
    pub gate_up_proj: Linear<B>,
    /// `[intermediate, hidden]`.
    pub down_proj: Linear<B>,
}

impl<B: Kernels> Phi3Mlp<B> {
    fn load(w: &Weights<B>, prefix: &str, c: &TextConfig) -> Result<Self> {
        Ok(Self {
            gate_up_proj: Linear::load(w, &format!("{prefix}.gate_up_proj"), c.hidden_size, 2 * c.intermediate_size, false)?,
            down_proj: Linear::load(w, &format!("{prefix}.down_proj"), c.intermediate_size, c.hidden_size, false)?,
        })
    }

    /// HF's `Phi3MLP`. (The decoder layer runs these steps fused with its norm and residual
    /// add.)
    ///
    /// # Shapes
    /// `[batch, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate_up = self.gate_up_proj.forward(x); // [b, s, 2·intermediate]
        self.down_proj.forward(kernels::silu_mul(gate_up)) // up · silu(gate)
    }
}

// ---------------------------------------------------------------------------------------------
// Decoder layer and model
// ---------------------------------------------------------------------------------------------

/// `Phi3DecoderLayer`: pre-norm attention and MLP with residuals.
#[derive(Debug, Clone)]
pub struct Phi3DecoderLayer<B: Backend> {
    /// RMSNorm before attention.
    pub input_layernorm: Phi3RmsNorm<B>,
    /// Attention.
    pub self_attn: Phi3Attention<B>,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: Phi3RmsNorm<B>,
    /// MLP.
    pub mlp: Phi3Mlp<B>,
}

impl<B: Kernels> Phi3DecoderLayer<B> {
    fn load(w: &Weights<B>, prefix: &str, c: &TextConfig) -> Result<Self> {
        let eps = c.rms_norm_eps;
        Ok(Self {
            input_layernorm: Phi3RmsNorm::load(w, &format!("{prefix}.input_layernorm"), c.hidden_size, eps)?,
            self_attn: Phi3Attention::load(w, &format!("{prefix}.self_attn"), c)?,
            post_attention_layernorm: Phi3RmsNorm::load(w, &format!("{prefix}.post_attention_layernorm"), c.hidden_size, eps)?,
            mlp: Phi3Mlp::load(w, &format!("{prefix}.mlp"), c)?,
        })
    }

    /// # Shapes
    /// `[batch, seq, hidden]` → same
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: &mut Option<LayerKv<B>>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        self.forward_with(x, |qkv| self.self_attn.attend(qkv, cos, sin, cache, mask))
    }

    /// `h = x + o_proj(attention(qkv_proj(input_layernorm(x))))`, then `h + down_proj(up ·
    /// SiLU(gate))` with `[gate | up] = gate_up_proj(post_attention_layernorm(h))`, where
    /// `attention` maps `qkv_proj`'s output to `o_proj`'s input. Each norm runs inside the
    /// projection after it and each residual add and the SiLU·mul inside the projection
    /// before it (one launch per projection on a few rows, see [`kernels::norm_linear`]);
    /// the projections have no bias.
    fn forward_with(&self, x: Tensor<B, 3>, attention: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>) -> Tensor<B, 3> {
        let (ln1, attn) = (&self.input_layernorm, &self.self_attn);
        let qkv = kernels::norm_linear(x.clone(), &ln1.weight, ln1.eps, &attn.qkv_proj.weight);
        let h = kernels::linear_add(attention(qkv), &attn.o_proj.weight, x);
        let (ln2, mlp) = (&self.post_attention_layernorm, &self.mlp);
        let act = kernels::norm_linear_silu_mul(h.clone(), &ln2.weight, ln2.eps, &mlp.gate_up_proj.weight); // up · silu(gate)
        kernels::linear_add(act, &mlp.down_proj.weight, h)
    }
}

/// What a decoder pass returns.
#[derive(Debug, Clone)]
pub struct DecoderOutput<B: Backend> {
    /// After the final `norm`: `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// When requested, HF's `hidden_states`: the input embeddings, the output of every layer
    /// but the last, and the normed output of the last (`num_layers + 1` entries).
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
}

/// The Phi-3 decoder stack: `embed_tokens`, `layers`, `norm` (checkpoint prefix `model.`).
#[derive(Debug, Clone)]
pub struct Phi3Model<B: Backend> {
    /// `[vocab, hidden]`.
    pub embed_tokens: Tensor<B, 2>,
    /// Decoder layers.
    pub layers: Vec<Phi3DecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: Phi3RmsNorm<B>,
    /// Rotary tables.
    pub rotary_emb: RotaryEmbedding,
}

impl<B: Kernels> Phi3Model<B> {
    /// Loads the decoder under `prefix` (`model`). `embed_aliases` are other names the
    /// checkpoint may store `embed_tokens` under.
    pub fn load(w: &Weights<B>, prefix: &str, c: &TextConfig, embed_aliases: &[&str]) -> Result<Self> {
        let embed_name = format!("{prefix}.embed_tokens.weight");
        let mut names = vec![embed_name.as_str()];
        names.extend_from_slice(embed_aliases);
        let embed_tokens = w.tensor_aliased(&names, [c.vocab_size, c.hidden_size])?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Phi3DecoderLayer::load(w, &format!("{prefix}.layers.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: Phi3RmsNorm::load(w, &format!("{prefix}.norm"), c.hidden_size, c.rms_norm_eps)?,
            rotary_emb: RotaryEmbedding::new(c),
        })
    }

    /// Token embeddings of non-negative ids.
    ///
    /// # Shapes
    /// `[batch, seq]` → `[batch, seq, hidden]`
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        embedding(self.embed_tokens.clone(), ids)
    }

    /// Runs the decoder over `inputs_embeds` at `positions` (one row per sequence, row b rotated
    /// in `regimes[b]`), appending to `cache`. Keys already cached keep the rotation they were
    /// made with: the caller recomputes the cache when a row's regime changes.
    ///
    /// # Shapes
    /// - `inputs_embeds`: `[batch, seq, hidden]`; `positions`: `batch × seq`
    /// - `mask`: `[batch, heads, seq, cached + seq]` (`true` = masked) or `None` for causal
    pub fn forward(
        &self,
        inputs_embeds: Tensor<B, 3>,
        positions: &[Vec<usize>],
        regimes: &[RopeRegime],
        cache: &mut KvCache<B>,
        mask: Option<Tensor<B, 4, Bool>>,
        output_hidden_states: bool,
    ) -> DecoderOutput<B> {
        let device = inputs_embeds.device();
        let dtype = inputs_embeds.dtype();
        let (cos, sin) = self.rotary_emb.tables::<B>(positions, regimes, &device, dtype);
        let mut hidden_states = output_hidden_states.then(Vec::new);
        let mut x = inputs_embeds;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            if let Some(hs) = hidden_states.as_mut() {
                hs.push(x.clone());
            }
            x = layer.forward(x, &cos, &sin, kv, mask.clone());
        }
        cache.regimes = regimes.to_vec();
        let x = self.norm.forward(x);
        if let Some(hs) = hidden_states.as_mut() {
            hs.push(x.clone());
        }
        DecoderOutput {
            last_hidden_state: x,
            hidden_states,
        }
    }

    /// Runs the decoder over a flat pass of tokens from several sequences whose keys and values
    /// live in a paged cache; `batch` gives each token's position and LongRoPE regime (its
    /// sequence's), where its keys go and which keys it sees.
    ///
    /// # Shapes
    /// `inputs_embeds`: `[1, tokens, hidden]` → after the final `norm`, `[1, tokens, hidden]`
    pub fn forward_paged(&self, inputs_embeds: Tensor<B, 3>, cache: &mut PagedKvCache<B>, batch: &PagedBatch<B>) -> Tensor<B, 3> {
        let device = inputs_embeds.device();
        let [_, t, _] = inputs_embeds.dims();
        let one_per_row: Vec<Vec<usize>> = batch.positions().iter().map(|&p| vec![p]).collect();
        let (cos, sin) = self.rotary_emb.tables::<B>(&one_per_row, batch.regimes(), &device, inputs_embeds.dtype());
        let hd = cos.dims()[3];
        let (cos, sin) = (cos.reshape([1, 1, t, hd]), sin.reshape([1, 1, t, hd])); // [t, 1, 1, hd] → one row
        let mut x = inputs_embeds;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward_with(x, |qkv| layer.self_attn.attend_paged(qkv, &cos, &sin, kv, batch));
        }
        self.norm.forward(x)
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type B = burn::backend::Flex;

    /// Appending in steps (a prefill, single positions, a chunk crossing a growth boundary)
    /// caches what one `cat` of everything holds, and a clone appended to leaves its original
    /// as it was.
    #[test]
    fn layer_kv_appends_equal_one_cat_and_clones_stay_independent() {
        let random = |n: usize| Tensor::<B, 4>::random([2, 3, n, 4], Distribution::Normal(0.0, 1.0), &Default::default());
        let chunks: Vec<(Tensor<B, 4>, Tensor<B, 4>)> = [250, 1, 1, 3, 1, 300, 1].iter().map(|&n| (random(n), random(n))).collect();
        let mut kv = LayerKv::new(chunks[0].0.clone(), chunks[0].1.clone());
        for (k, v) in &chunks[1..] {
            kv = kv.append(k.clone(), v.clone());
        }
        let all = |i: usize| Tensor::cat(chunks.iter().map(|c| if i == 0 { c.0.clone() } else { c.1.clone() }).collect(), 2);
        assert_eq!(kv.len(), 557);
        assert_eq!(kv.keys().dims(), [2, 3, 557, 4]);
        assert!(kv.keys().equal(all(0)).all().into_scalar());
        assert!(kv.values().equal(all(1)).all().into_scalar());

        let before = kv.keys();
        let fork = kv.clone().append(random(1), random(1));
        assert_eq!((fork.len(), kv.len()), (558, 557));
        assert!(kv.keys().equal(before).all().into_scalar());
    }

    /// The rotary tables from the kept rows equal the reference's per-position computation
    /// (bit for bit) in both regimes: rows computed on first use, rows served again, positions
    /// out of order, and positions past [`CACHED_POSITIONS`].
    #[test]
    fn rotary_tables_from_kept_rows_equal_a_direct_computation() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/phi3v-tiny/config.json");
        let config = crate::config::Phi3VConfig::from_file(&path).expect("tiny config");
        let rope = RotaryEmbedding::new(&config.text);
        assert!(rope.long_inv_freq.is_some(), "the tiny config has LongRoPE");
        let direct = |ps: &[usize], regime: RopeRegime| -> (Vec<f32>, Vec<f32>) {
            let inv = if regime == RopeRegime::Long { rope.long_inv_freq.as_ref().unwrap() } else { &rope.short_inv_freq };
            let (mut cos, mut sin) = (Vec::new(), Vec::new());
            for &p in ps {
                for _ in 0..2 {
                    cos.extend(inv.iter().map(|f| (f * p as f32).cos() * rope.mscale));
                    sin.extend(inv.iter().map(|f| (f * p as f32).sin() * rope.mscale));
                }
            }
            (cos, sin)
        };
        let host = |t: Tensor<B, 4>| t.into_data().to_vec::<f32>().unwrap();
        let cases: [Vec<usize>; 4] = [(0..9).collect(), vec![7, 3, 8], vec![CACHED_POSITIONS - 2, CACHED_POSITIONS + 5, 1], (100..140).collect()];
        for _ in 0..2 {
            for ps in &cases {
                for regime in [RopeRegime::Short, RopeRegime::Long] {
                    let (cos, sin) = rope.tables::<B>(&[ps.clone(), ps.clone()], &[regime, regime], &Default::default(), DType::F32);
                    assert_eq!(cos.dims(), [2, 1, ps.len(), rope.head_dim]);
                    let (want_cos, want_sin) = direct(ps, regime);
                    let twice = |v: Vec<f32>| [v.clone(), v].concat();
                    assert_eq!(host(cos), twice(want_cos), "cos at {ps:?} {regime:?}");
                    assert_eq!(host(sin), twice(want_sin), "sin at {ps:?} {regime:?}");
                }
            }
        }
        // Consecutive positions in one regime take slices of the device tables: one row (a
        // prefill, a decode step), one position per row (the engine's chunk of one sequence),
        // the device table grown past its first size, and the last kept position.
        let consecutive: [(usize, usize, usize); 5] = [(0, 1, 9), (100, 1, 40), (5, 3, 1), (DEVICE_ROWS_MIN - 2, 1, 7), (CACHED_POSITIONS - 4, 1, 4)];
        for _ in 0..2 {
            for (start, batch, seq) in consecutive {
                let rows: Vec<Vec<usize>> = (0..batch).map(|b| (start + b * seq..start + (b + 1) * seq).collect()).collect();
                for regime in [RopeRegime::Short, RopeRegime::Long] {
                    assert!(rope.device_tables::<B>(&rows, &vec![regime; batch], &Default::default(), DType::F32).is_some(), "{rows:?} takes the device tables");
                    let (cos, sin) = rope.tables::<B>(&rows, &vec![regime; batch], &Default::default(), DType::F32);
                    assert_eq!(cos.dims(), [batch, 1, seq, rope.head_dim]);
                    let (want_cos, want_sin) = direct(&rows.concat(), regime);
                    assert_eq!(host(cos), want_cos, "cos at {rows:?} {regime:?}");
                    assert_eq!(host(sin), want_sin, "sin at {rows:?} {regime:?}");
                }
            }
        }
        // Not consecutive, past the kept rows, or regimes that differ: the host builds them.
        let none = |rows: &[Vec<usize>], regimes: &[RopeRegime]| rope.device_tables::<B>(rows, regimes, &Default::default(), DType::F32).is_none();
        assert!(none(&[vec![3, 5]], &[RopeRegime::Short]));
        assert!(none(&[(0..4).collect(), (0..4).collect()], &[RopeRegime::Short; 2]));
        assert!(none(&[vec![CACHED_POSITIONS - 1, CACHED_POSITIONS]], &[RopeRegime::Short]));
        assert!(none(&[vec![4], vec![5]], &[RopeRegime::Short, RopeRegime::Long]));
    }
}
