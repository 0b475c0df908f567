//! den's benchmarks. Each scenario prints one JSON object on standard output.
//!
//! Run them in release mode: `cargo run --release -p den-bench -- queue`.

mod agent;
mod campaign;
mod discord;
#[cfg(feature = "aws")]
mod lambda;
mod local;
mod memory;
mod music;
mod persona;
mod queue;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "den-bench", about = "den's benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// The SQLite queue: batched sends/s, end-to-end jobs/s, send-to-handler latency.
    Queue(queue::Options),
    /// Resident memory of an idle `den run`.
    Memory(memory::Options),
    /// MESSAGE_CREATE events per second parsed, filtered and durably enqueued.
    Ingest(discord::IngestOptions),
    /// Time from INTERACTION_CREATE to the deferred callback, at a steady rate.
    Interactions(discord::InteractionsOptions),
    /// Time from MESSAGE_CREATE to a persona's first visible words, minus the model's time to first token.
    Persona(persona::PersonaOptions),
    /// Memory recall latency with many facts in one guild.
    Recall(persona::RecallOptions),
    /// Wall time of the default campaign template against Discord-like rate limits, next to their floor.
    Campaign(campaign::CampaignOptions),
    /// A gateway and two workers under faults: lost and duplicated side effects.
    Chaos(den_bench::chaos::ChaosOptions),
    /// The local model: time to first token, tokens/s at 1 and 2 threads, resident memory.
    LocalModel(local::LocalModelOptions),
    /// The coding agent: den's time per turn (the model answering at once) and the sandbox's start.
    Agent(agent::AgentOptions),
    /// Music: join → first packet, packet pacing, and how many servers play at once.
    Music(music::MusicOptions),
    /// den as Lambda functions (on moto): cold starts, warm invocations per kind, peak memory.
    #[cfg(feature = "aws")]
    Lambda(lambda::LambdaOptions),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs of den's parts on standard error, only when asked for (RUST_LOG=den_discord=debug, say).
    if std::env::var_os("RUST_LOG").is_some() {
        den_ops::init_logging(den_ops::LogFormat::Text, "warn");
    }
    let report = match cli.scenario {
        Scenario::Queue(o) => queue::run(&o)?,
        Scenario::Memory(o) => memory::run(&o)?,
        Scenario::Ingest(o) => discord::ingest(&o)?,
        Scenario::Interactions(o) => discord::interactions(&o)?,
        Scenario::Persona(o) => persona::persona(&o)?,
        Scenario::Recall(o) => persona::recall(&o)?,
        Scenario::Campaign(o) => campaign::run(&o)?,
        Scenario::Chaos(o) => den_bench::chaos::run(&o)?,
        Scenario::LocalModel(o) => local::run(&o)?,
        Scenario::Agent(o) => agent::run(&o)?,
        Scenario::Music(o) => music::run(&o)?,
        #[cfg(feature = "aws")]
        Scenario::Lambda(o) => lambda::run(&o)?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Whether `url` answers with a success within `within` (polled every 50 ms): a den process's `/ready`.
fn ready_within(rt: &tokio::runtime::Runtime, url: &str, within: std::time::Duration) -> bool {
    rt.block_on(async {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    })
}

/// The value at quantile `q` (0..=1) of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
