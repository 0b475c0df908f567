//! The Llama architecture (SmolLM2 is one) over quantized GGUF weights:
//! loading, and the forward pass with a key/value cache.
//!
//! Weights are kept as Q8_0. Candle's Q4_1 and Q5 kernels are scalar, its
//! Q8_0 one uses AVX2/AVX-512/NEON: requantising at load costs about a second
//! and 30% more memory, and buys about four times the speed.

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module as _, Tensor};

use crate::LoadError;

/// Bytes of one Q8_0 block: an f16 scale and 32 signed bytes.
const Q8_0_BLOCK: usize = 34;
/// Values per Q8_0 block.
const Q8_0_VALUES: usize = 32;

/// The shape of a model, from its GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Shape {
    pub blocks: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub context: usize,
    pub vocab: usize,
}

impl Shape {
    fn read(ct: &gguf_file::Content) -> Result<Self, LoadError> {
        let arch = text(ct, "general.architecture")?;
        if arch != "llama" {
            return Err(LoadError::unsupported(format!("architecture {arch:?} (den runs llama-architecture models)")));
        }
        let number = |key: &str| -> Result<usize, LoadError> {
            let v = ct.metadata.get(key).ok_or_else(|| LoadError::unreadable(format!("no {key} in the metadata")))?;
            v.to_u32()
                .map(|n| n as usize)
                .or_else(|_| v.to_u64().map(|n| n as usize))
                .map_err(|_| LoadError::unreadable(format!("{key} is not a number")))
        };
        let float =
            |key: &str, default: f32| -> f32 { ct.metadata.get(key).and_then(|v| v.to_f32().ok()).unwrap_or(default) };
        let dim = number("llama.embedding_length")?;
        let heads = number("llama.attention.head_count")?;
        let kv_heads = number("llama.attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || dim % heads != 0 || heads % kv_heads != 0 || (dim / heads) % 2 != 0 {
            return Err(LoadError::unreadable(format!(
                "inconsistent heads: {heads} heads, {kv_heads} kv heads, dim {dim}"
            )));
        }
        let vocab = ct
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(Vec::len)
            .ok_or_else(|| LoadError::unreadable("no tokenizer.ggml.tokens in the metadata"))?;
        Ok(Self {
            blocks: number("llama.block_count")?,
            dim,
            heads,
            kv_heads,
            head_dim: dim / heads,
            eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: float("llama.rope.freq_base", 10_000.0),
            context: number("llama.context_length").unwrap_or(2048),
            vocab,
        })
    }
}

fn text(ct: &gguf_file::Content, key: &str) -> Result<String, LoadError> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| LoadError::unreadable(format!("no {key} in the metadata")))
}

/// A weight matrix, multiplied two ways: row by row on its Q8_0 blocks for
/// a few positions, or dequantised for the moment into one f32 matrix
/// product when a prompt brings many (three times faster at 100 positions,
/// and the f32 copy never outlives the product).
struct Weight {
    quantized: Arc<QTensor>,
    rows: QMatMul,
}

/// Positions from which a product goes through f32.
const GEMM_FROM: usize = 8;

impl Weight {
    fn new(t: QTensor) -> candle_core::Result<Self> {
        let quantized = Arc::new(as_q8(t)?);
        Ok(Self { rows: QMatMul::from_arc(quantized.clone())?, quantized })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dim(0)? >= GEMM_FROM && self.quantized.dtype() != GgmlDType::F32 {
            let w = self.quantized.dequantize(&Device::Cpu)?;
            x.matmul(&w.t()?)
        } else {
            self.rows.forward(x)
        }
    }
}

struct Block {
    attn_norm: Tensor,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    ffn_norm: Tensor,
    gate: Weight,
    down: Weight,
    up: Weight,
}

/// Keys and values of the positions seen so far, per block.
#[derive(Default)]
pub(crate) struct Cache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl Cache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Keeps the first `len` positions (a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) -> candle_core::Result<()> {
        if len >= self.len {
            return Ok(());
        }
        for layer in &mut self.layers {
            *layer = match layer.take() {
                Some((k, v)) if len > 0 => Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)),
                _ => None,
            };
        }
        self.len = len;
        Ok(())
    }
}

/// A loaded model.
pub(crate) struct Llama {
    pub shape: Shape,
    /// The token embeddings as Q8_0, shared with `output` when the model ties them.
    embeddings: Arc<QTensor>,
    blocks: Vec<Block>,
    norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
}

/// A weight as den multiplies with it: Q8_0 when it is quantized another way.
fn as_q8(t: QTensor) -> candle_core::Result<QTensor> {
    let quantized_otherwise = !matches!(t.dtype(), GgmlDType::Q8_0 | GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
    let row = t.shape().dims().last().copied().unwrap_or(0);
    if quantized_otherwise && row % Q8_0_VALUES == 0 {
        QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)
    } else {
        Ok(t)
    }
}

fn bad(name: &str) -> impl Fn(candle_core::Error) -> LoadError + '_ {
    move |e| LoadError::unreadable(format!("tensor {name}: {e}"))
}

impl Llama {
    /// Loads the weights `ct` describes from `reader`.
    pub fn load<R: Read + Seek>(ct: &gguf_file::Content, reader: &mut R, context: usize) -> Result<Self, LoadError> {
        let shape = Shape::read(ct)?;
        let dev = Device::Cpu;
        let mut tensor = |name: &str| -> Result<QTensor, LoadError> {
            ct.tensor(reader, name, &dev).map_err(|e| LoadError::unreadable(format!("tensor {name}: {e}")))
        };
        let float = |t: QTensor| t.dequantize(&Device::Cpu);

        let embeddings =
            QTensor::quantize(&float(tensor("token_embd.weight")?).map_err(bad("token_embd"))?, GgmlDType::Q8_0)
                .map_err(bad("token_embd"))?;
        if embeddings.shape().dims() != [shape.vocab, shape.dim] {
            return Err(LoadError::unreadable(format!(
                "token_embd.weight is {:?}, expected [{}, {}]",
                embeddings.shape().dims(),
                shape.vocab,
                shape.dim
            )));
        }
        let embeddings = Arc::new(embeddings);
        let output = match tensor("output.weight") {
            Ok(t) => QMatMul::from_qtensor(as_q8(t).map_err(bad("output"))?).map_err(bad("output"))?,
            // Tied embeddings (SmolLM2): the output projection is the embedding matrix.
            Err(_) => QMatMul::from_arc(embeddings.clone()).map_err(bad("output"))?,
        };
        let norm = float(tensor("output_norm.weight")?).map_err(bad("output_norm"))?;
        let mut blocks = Vec::with_capacity(shape.blocks);
        for i in 0..shape.blocks {
            let mut w = |suffix: &str| -> Result<Weight, LoadError> {
                let name = format!("blk.{i}.{suffix}.weight");
                Weight::new(tensor(&name)?).map_err(bad(&name))
            };
            let (wq, wk, wv, wo) = (w("attn_q")?, w("attn_k")?, w("attn_v")?, w("attn_output")?);
            let (gate, down, up) = (w("ffn_gate")?, w("ffn_down")?, w("ffn_up")?);
            let mut norm = |suffix: &str| -> Result<Tensor, LoadError> {
                let name = format!("blk.{i}.{suffix}.weight");
                float(tensor(&name)?).map_err(bad(&name))
            };
            blocks.push(Block {
                attn_norm: norm("attn_norm")?,
                ffn_norm: norm("ffn_norm")?,
                wq,
                wk,
                wv,
                wo,
                gate,
                down,
                up,
            });
        }
        let positions = context.min(shape.context).max(1);
        let (cos, sin) = rope_tables(&shape, positions).map_err(bad("rope"))?;
        Ok(Self { shape, embeddings, blocks, norm, output, cos, sin })
    }

    /// Positions the rope tables cover: the longest prompt plus reply.
    pub fn positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rows of the embedding matrix for `tokens`, from its Q8_0 blocks.
    fn embed(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let dim = self.shape.dim;
        let row_bytes = dim / Q8_0_VALUES * Q8_0_BLOCK;
        let data = self.embeddings.data()?;
        let mut out = Vec::with_capacity(tokens.len() * dim);
        for &t in tokens {
            let start = t as usize * row_bytes;
            let row = data
                .get(start..start + row_bytes)
                .ok_or_else(|| candle_core::Error::Msg(format!("token {t} is outside the vocabulary")))?;
            for block in row.chunks_exact(Q8_0_BLOCK) {
                let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                out.extend(block[2..].iter().map(|&q| scale * f32::from(q as i8)));
            }
        }
        Tensor::from_vec(out, (tokens.len(), dim), &Device::Cpu)
    }

    /// Runs `tokens` (the positions after those in `cache`) and returns the
    /// logits of the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> candle_core::Result<Vec<f32>> {
        let seq = tokens.len();
        let start = cache.len;
        if seq == 0 || start + seq > self.positions() {
            return Err(candle_core::Error::Msg(format!(
                "{} positions do not fit the {} the model was loaded for",
                start + seq,
                self.positions()
            )));
        }
        cache.layers.resize(self.blocks.len(), None);
        let Shape { heads, kv_heads, head_dim, eps, .. } = self.shape;
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        // Each new position sees every cached one and the new ones up to itself.
        let mask = (seq > 1)
            .then(|| {
                let total = start + seq;
                let m: Vec<f32> = (0..seq)
                    .flat_map(|i| (0..total).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                Tensor::from_vec(m, (seq, total), &Device::Cpu)
            })
            .transpose()?;
        let mut x = self.embed(tokens)?;
        let heads_first = |t: Tensor, n: usize| t.reshape((1, seq, n, head_dim))?.transpose(1, 2)?.contiguous();
        for (block, slot) in self.blocks.iter().zip(&mut cache.layers) {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
            let q = heads_first(block.wq.forward(&h)?, heads)?;
            let k = heads_first(block.wk.forward(&h)?, kv_heads)?;
            let v = heads_first(block.wv.forward(&h)?, kv_heads)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            *slot = Some((k.clone(), v.clone()));
            let attended = attention(&q, &k, &v, mask.as_ref(), heads / kv_heads)?;
            let y = attended.transpose(1, 2)?.reshape((seq, heads * head_dim))?;
            x = (x + block.wo.forward(&y)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
            let gated = (candle_nn::ops::silu(&block.gate.forward(&h)?)? * block.up.forward(&h)?)?;
            x = (x + block.down.forward(&gated)?)?;
        }
        cache.len = start + seq;
        let last = candle_nn::ops::rms_norm(&x.narrow(0, seq - 1, 1)?, &self.norm, eps)?;
        self.output.forward(&last)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()
    }
}

/// Scaled dot-product attention, each key/value head shared by `group` query heads.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, group: usize) -> candle_core::Result<Tensor> {
    let (_, heads, _, head_dim) = q.dims4()?;
    let repeat = |t: &Tensor| -> candle_core::Result<Tensor> {
        if group == 1 {
            return Ok(t.clone());
        }
        let (b, kv, n, d) = t.dims4()?;
        t.unsqueeze(2)?.expand((b, kv, group, n, d))?.reshape((b, kv * group, n, d))
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    debug_assert_eq!(k.dims()[1], heads);
    let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)
}

/// Rotary-embedding cosines and sines for `positions` positions.
fn rope_tables(shape: &Shape, positions: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let dev = Device::Cpu;
    let half = shape.head_dim / 2;
    let inverse: Vec<f32> =
        (0..half).map(|i| 1.0 / shape.rope_base.powf((2 * i) as f32 / shape.head_dim as f32)).collect();
    let inverse = Tensor::from_vec(inverse, (1, half), &dev)?;
    let at = Tensor::arange(0u32, positions as u32, &dev)?.to_dtype(DType::F32)?.reshape((positions, 1))?;
    let angles = at.matmul(&inverse)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// The index of the largest value.
pub(crate) fn argmax(values: &[f32]) -> u32 {
    values.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
        as u32
}
