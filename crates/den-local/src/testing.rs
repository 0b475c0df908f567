//! Tiny GGUF models for tests: the real architecture, tokenizer and chat
//! template at a few hundred kilobytes, with a reply known in advance.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// What a tiny model says, whatever it is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Says {
    /// "hahaha…" until its token budget runs out.
    Laughter,
    /// Nothing: it ends its turn at once.
    Nothing,
}

const DIM: usize = 64;
const FFN: usize = 128;
const BLOCKS: usize = 2;
const HEADS: u32 = 4;
const KV_HEADS: u32 = 2;

/// GPT-2's byte-level alphabet: every byte as a printable character.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).unwrap_or('?')
            }
        })
        .collect()
}

/// Writes a two-block llama model that says `says` to `path`. Its weights
/// are Q4_1, as the default model's, so loading requantises them.
pub fn write_tiny_model(path: &Path, says: Says) -> std::io::Result<()> {
    let io = |e: candle_core::Error| std::io::Error::other(e.to_string());
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    tokens.extend(specials.map(str::to_owned));
    tokens.push("ha".into());
    let laugh = (tokens.len() - 1) as u32;
    let end = 258u32;
    let vocab = tokens.len();
    let types: Vec<Value> = (0..vocab).map(|i| Value::I32(if (256..259).contains(&i) { 3 } else { 1 })).collect();

    let mut rng = StdRng::seed_from_u64(7);
    let mut noise = |rows: usize, cols: usize| -> candle_core::Result<QTensor> {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-0.01..0.01)).collect();
        QTensor::quantize(&Tensor::from_vec(values, (rows, cols), &Device::Cpu)?, GgmlDType::Q4_1)
    };
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu);
    // Every token embeds as the same vector; the output row of the favourite
    // token is that vector, so it wins every step whatever came before.
    let favourite = match says {
        Says::Laughter => laugh,
        Says::Nothing => end,
    };
    let mut output = vec![0f32; vocab * DIM];
    output[favourite as usize * DIM..(favourite as usize + 1) * DIM].fill(1.0);
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            QTensor::quantize(
                &Tensor::ones((vocab, DIM), candle_core::DType::F32, &Device::Cpu).map_err(io)?,
                GgmlDType::Q4_1,
            )
            .map_err(io)?,
        ),
        (
            "output.weight".into(),
            QTensor::quantize(&Tensor::from_vec(output, (vocab, DIM), &Device::Cpu).map_err(io)?, GgmlDType::Q8_0)
                .map_err(io)?,
        ),
        ("output_norm.weight".into(), QTensor::quantize(&ones(DIM).map_err(io)?, GgmlDType::F32).map_err(io)?),
    ];
    let kv = DIM / HEADS as usize * KV_HEADS as usize;
    for i in 0..BLOCKS {
        for (name, rows, cols) in [
            ("attn_q", DIM, DIM),
            ("attn_k", kv, DIM),
            ("attn_v", kv, DIM),
            ("attn_output", DIM, DIM),
            ("ffn_gate", FFN, DIM),
            ("ffn_up", FFN, DIM),
            ("ffn_down", DIM, FFN),
        ] {
            tensors.push((format!("blk.{i}.{name}.weight"), noise(rows, cols).map_err(io)?));
        }
        for name in ["attn_norm", "ffn_norm"] {
            let norm = QTensor::quantize(&ones(DIM).map_err(io)?, GgmlDType::F32).map_err(io)?;
            tensors.push((format!("blk.{i}.{name}.weight"), norm));
        }
    }

    let text = |s: &str| Value::String(s.to_owned());
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", text("llama")),
        ("general.name", text("den tiny test model")),
        ("llama.block_count", Value::U32(BLOCKS as u32)),
        ("llama.context_length", Value::U32(256)),
        ("llama.embedding_length", Value::U32(DIM as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("tokenizer.ggml.model", text("gpt2")),
        ("tokenizer.ggml.pre", text("smollm")),
        ("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| text(t)).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(vec![text("h a")])),
        ("tokenizer.ggml.bos_token_id", Value::U32(257)),
        ("tokenizer.ggml.eos_token_id", Value::U32(end)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut file = std::fs::File::create(path)?;
    gguf_file::write(&mut file, &metadata, &tensors).map_err(io)
}
