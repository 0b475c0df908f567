//! `den-bench local-model`: the local model's time to first token, tokens
//! per second and resident memory, at each thread count in a fresh process
//! (candle sizes its thread pool once per process).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use den_llm::{ChatModel as _, ChatRequest, StreamEvent};
use den_local::{LocalModel, LocalOptions};
use den_personas::persona::Persona;
use den_personas::prompt::{Cue, PromptParts, PromptStyle};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// Options of the local-model scenario.
#[derive(Debug, clap::Args)]
pub struct LocalModelOptions {
    /// The GGUF model (default: den-data/models/, where `den model fetch` puts it).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Thread counts to measure, each in its own process.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    threads: Vec<usize>,
    /// Replies measured per thread count, cold and warm each.
    #[arg(long, default_value_t = 6)]
    runs: usize,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 64)]
    tokens: u32,
    /// Measure in this process (the parent sets it for each thread count).
    #[arg(long, hide = true)]
    child: bool,
}

const PERSONAS: [&str; 3] = [
    include_str!("../../../personas/grumpy-gran.toml"),
    include_str!("../../../personas/sir-quill.toml"),
    include_str!("../../../personas/byte.toml"),
];
const ASKS: [&str; 3] =
    ["what do you think of my new hat?", "I just bought a fourth keyboard, roast me.", "is pineapple on pizza fine?"];

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn run(o: &LocalModelOptions) -> anyhow::Result<Value> {
    let model =
        o.model.clone().unwrap_or_else(|| den_local::fetch::SMOLLM2_135M.path_in(&PathBuf::from("den-data/models")));
    anyhow::ensure!(model.exists(), "{} not found: run `den model fetch` first, or pass --model", model.display());
    if o.child {
        return measure(&model, o);
    }
    let mut by_threads = Vec::new();
    for &threads in &o.threads {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["local-model", "--child", "--runs", &o.runs.to_string(), "--tokens", &o.tokens.to_string()])
            .arg("--model")
            .arg(&model)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .env("CANDLE_NUM_THREADS", threads.to_string())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "measuring {threads} threads failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut report: Value = serde_json::from_slice(&out.stdout)?;
        report["threads"] = threads.into();
        by_threads.push(report);
    }
    Ok(json!({
        "scenario": "local-model",
        "model": model.display().to_string(),
        "goals": {"ttft_ms": 500, "tokens_per_s_one_thread": 30, "rss_added_mib": 250},
        "by_threads": by_threads,
    }))
}

/// A persona's brief prompt, as den sends it to a local model.
fn prompt(persona: &Persona, transcript: &[den_personas::memory::Line], max_tokens: u32) -> ChatRequest {
    den_personas::prompt::build(&PromptParts {
        persona,
        directives: &[],
        memories: &[],
        triggered: &[],
        transcript,
        replied_to: None,
        cue: Cue::Addressed,
        budget_tokens: 1_000,
        max_tokens,
        style: PromptStyle::Brief,
    })
}

fn line(n: u64, author: &str, persona: Option<&Persona>, text: &str) -> den_personas::memory::Line {
    den_personas::memory::Line {
        message_id: n,
        user_id: if persona.is_some() { 0 } else { n },
        persona: persona.map(|p| p.id.clone()),
        author: author.into(),
        text: text.into(),
        at: den_core::Timestamp(n as i64),
        about_user: 0,
    }
}

struct Timing {
    ttft: Duration,
    tokens_per_s: Option<f64>,
    prompt_tokens: u64,
    cached: u64,
    text: String,
}

async fn time(model: &LocalModel, request: &ChatRequest) -> anyhow::Result<Timing> {
    let start = Instant::now();
    let mut stream = model.stream(request).await?;
    let (mut first, mut text) = (None, String::new());
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(d) => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&d);
            }
            StreamEvent::ToolCall(_) => {} // no tools offered
            StreamEvent::Done { usage, .. } => {
                let first = first.unwrap_or_else(Instant::now);
                let decoding = first.elapsed().as_secs_f64();
                let tokens_per_s =
                    (usage.output_tokens >= 8).then(|| (usage.output_tokens - 1) as f64 / decoding.max(1e-6));
                return Ok(Timing {
                    ttft: first - start,
                    tokens_per_s,
                    prompt_tokens: usage.input_tokens,
                    cached: usage.cache_read_tokens,
                    text,
                });
            }
        }
    }
    anyhow::bail!("the stream ended without its final event")
}

fn measure(path: &std::path::Path, o: &LocalModelOptions) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let personas: Vec<Persona> = PERSONAS.iter().map(|t| toml::from_str(t)).collect::<Result<_, _>>()?;
    let before = rss_kib();
    let model = LocalModel::load(path, LocalOptions { seed: Some(7), ..LocalOptions::default() })?;
    let loaded = rss_kib();
    let (mut cold, mut warm, mut rates, mut sample) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prompt_tokens = Vec::new();
    rt.block_on(async {
        for run in 0..o.runs {
            // Cold: a persona other than the last one, so little of the prompt is cached.
            let persona = &personas[run % personas.len()];
            let ask = ASKS[run % ASKS.len()];
            let mut transcript = vec![line(1, "Ada", None, &format!("{}, {ask}", persona.name))];
            let first = time(&model, &prompt(persona, &transcript, o.tokens)).await?;
            // Warm: the same persona, one message later.
            transcript.push(line(2, &persona.name, Some(persona), &first.text));
            transcript.push(line(3, "Ben", None, "Harsh. Now do me."));
            let second = time(&model, &prompt(persona, &transcript, o.tokens)).await?;
            cold.push(first.ttft.as_secs_f64() * 1000.0);
            warm.push(second.ttft.as_secs_f64() * 1000.0);
            prompt_tokens
                .push(json!({"cold": first.prompt_tokens, "warm": second.prompt_tokens, "warm_cached": second.cached}));
            rates.extend(first.tokens_per_s.into_iter().chain(second.tokens_per_s));
            if sample.len() < 3 {
                sample.push(json!({"persona": persona.name, "said": first.text}));
            }
        }
        anyhow::Ok(())
    })?;
    let after = rss_kib();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        crate::quantile(v, 0.5)
    };
    let info = model.info();
    Ok(json!({
        "model": info.model,
        "parameters": info.parameters,
        "load_s": info.load_time.as_secs_f64(),
        "ttft_cold_ms_p50": median(&mut cold),
        "ttft_warm_ms_p50": median(&mut warm),
        "tokens_per_s_p50": median(&mut rates),
        "prompt_tokens": prompt_tokens.first(),
        "rss_added_mib": (after.saturating_sub(before)) as f64 / 1024.0,
        "rss_after_load_mib": (loaded.saturating_sub(before)) as f64 / 1024.0,
        "samples": sample,
    }))
}
