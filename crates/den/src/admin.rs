//! One-shot operator commands: queue inspection, DLQ repair, sweeping, config check.

use std::sync::Arc;

use anyhow::Context as _;
use den_core::{Clock, SystemClock};
use den_storage::{PeekedMessage, Queue, Store};

use crate::cli::{CommandsCommand, ConfigCommand, DlqCommand, QueueCommand, StoreCommand};
use crate::config::{self, Config, Loaded};
use crate::roles::{ModuleCx, egress, modules, open_store};

async fn open(c: &Config) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Queue>)> {
    let store = open_store(c).await?;
    let queue = store.queue();
    // The queue may not exist yet on a fresh install; creating it is idempotent.
    queue.create_queue(&c.queue.spec(&c.worker)).await.context("cannot create the job queue")?;
    Ok((store, queue))
}

/// `den queue ...`
pub async fn queue(command: QueueCommand, c: &Config) -> anyhow::Result<()> {
    let (store, queue) = open(c).await?;
    let result = match command {
        QueueCommand::Stats { json } => stats(&*queue, json).await,
        QueueCommand::Dlq { command } => dlq(command, &*queue, c).await,
    };
    store.close().await?;
    result
}

async fn stats(queue: &dyn Queue, json: bool) -> anyhow::Result<()> {
    let specs = queue.list_queues().await?;
    let mut rows = Vec::new();
    for spec in &specs {
        rows.push((spec.name.clone(), queue.depth(&spec.name).await?));
    }
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|(name, d)| serde_json::json!({"queue": name, "visible": d.visible, "in_flight": d.in_flight, "delayed": d.delayed}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
    println!("{:<width$}  {:>8}  {:>9}  {:>7}", "QUEUE", "VISIBLE", "IN_FLIGHT", "DELAYED");
    for (name, d) in rows {
        println!("{name:<width$}  {:>8}  {:>9}  {:>7}", d.visible, d.in_flight, d.delayed);
    }
    Ok(())
}

async fn all_messages(queue: &dyn Queue, name: &str, limit: usize) -> anyhow::Result<Vec<PeekedMessage>> {
    let mut out: Vec<PeekedMessage> = Vec::new();
    loop {
        let after = out.last().map(|m| m.message_id.clone());
        let page = queue.peek(name, 500.min(limit - out.len()), after.as_deref()).await?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
        if out.len() >= limit {
            return Ok(out);
        }
    }
}

fn kind_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "(malformed)".to_owned())
}

fn age(sent: den_core::Timestamp) -> String {
    let secs = SystemClock.now().since(sent).as_secs();
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

async fn dlq(command: DlqCommand, queue: &dyn Queue, c: &Config) -> anyhow::Result<()> {
    let dlq = c.queue.dlq_name();
    match command {
        DlqCommand::List { limit, json } => {
            let messages = all_messages(queue, &dlq, limit.max(1)).await?;
            if json {
                for m in &messages {
                    let line = serde_json::json!({
                        "id": m.message_id, "kind": kind_of(&m.body), "from": m.source_queue,
                        "receives": m.receive_count, "sent_at_ms": m.sent_at.as_millis(),
                    });
                    println!("{line}");
                }
                return Ok(());
            }
            if messages.is_empty() {
                println!("{dlq} is empty");
                return Ok(());
            }
            println!("{:<32}  {:<28}  {:<16}  {:>8}  {:>5}", "ID", "KIND", "FROM", "RECEIVES", "AGE");
            for m in &messages {
                println!(
                    "{:<32}  {:<28}  {:<16}  {:>8}  {:>5}",
                    m.message_id,
                    kind_of(&m.body),
                    m.source_queue.as_deref().unwrap_or("-"),
                    m.receive_count,
                    age(m.sent_at)
                );
            }
        }
        DlqCommand::Show { id } => {
            let messages = all_messages(queue, &dlq, usize::MAX).await?;
            let m =
                messages.iter().find(|m| m.message_id == id).with_context(|| format!("no message {id} in {dlq}"))?;
            let body = serde_json::from_str::<serde_json::Value>(&m.body).unwrap_or_else(|_| m.body.clone().into());
            let out = serde_json::json!({
                "id": m.message_id, "queue": dlq, "from": m.source_queue, "receives": m.receive_count,
                "sent_at_ms": m.sent_at.as_millis(), "body": body,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        DlqCommand::Redrive { limit } => {
            let moved = queue.redrive(&dlq, limit).await?;
            println!("moved {moved} message(s) from {dlq} back to their queue");
        }
        DlqCommand::Purge { yes } => {
            if !yes {
                let n = queue.depth(&dlq).await?.total();
                anyhow::bail!("this deletes {n} message(s) from {dlq} for good; run again with --yes");
            }
            let n = queue.purge(&dlq).await?;
            println!("deleted {n} message(s) from {dlq}");
        }
    }
    Ok(())
}

/// `den store ...`
pub async fn store(command: StoreCommand, c: &Config) -> anyhow::Result<()> {
    match command {
        StoreCommand::Sweep => {
            let store = open_store(c).await?;
            let report = store.sweep().await;
            store.close().await?;
            let report = report?;
            println!("deleted {} expired item(s) and {} expired message(s)", report.items, report.messages);
            Ok(())
        }
    }
}

/// `den config check`
pub fn config(command: ConfigCommand, loaded: &Loaded, env: &[(String, String)]) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check => {
            let file = loaded.file.as_ref().map_or_else(|| "none (defaults)".to_owned(), |p| p.display().to_string());
            println!("# den configuration: valid");
            println!("# file: {file}");
            if !loaded.overrides.is_empty() {
                println!("# environment overrides: {}", loaded.overrides.join(", "));
            }
            let token = match config::discord_token(&loaded.config.discord, env) {
                Ok(t) => format!("{t} (from {})", config::token_source(&loaded.config.discord)),
                Err(e) => format!("missing: {e}"),
            };
            println!("# discord token: {token}");
            println!();
            print!("{}", toml::to_string_pretty(&loaded.config)?);
            Ok(())
        }
    }
}

/// `den commands ...`
pub async fn commands(command: CommandsCommand, c: &Config, env: &[(String, String)]) -> anyhow::Result<()> {
    match command {
        CommandsCommand::Sync { guild } => {
            let token = config::discord_token(&c.discord, env)?;
            let (store, queue) = open(c).await?;
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let result = async {
                let (egress, _) = egress(c, Some(token), &store).await?;
                let metrics = den_ops::Metrics::new();
                let jobs = den_worker::JobQueue::new(queue.clone(), c.queue.name.clone(), metrics.clone());
                let cx = ModuleCx {
                    config: c,
                    env,
                    store: &store,
                    egress: &egress,
                    jobs: &jobs,
                    queue: &queue,
                    clock: &clock,
                    metrics: &metrics,
                    shards: None,
                    shutdown: &tokio_util::sync::CancellationToken::new(),
                    background: false,
                };
                let commands: Vec<_> = modules(&cx).await?.iter().flat_map(|m| m.commands()).collect();
                let names: Vec<String> = commands.iter().map(|c| format!("/{}", c.name)).collect();
                let n = den_discord::module::sync_commands(&egress, &commands, guild).await?;
                let scope = guild.map_or_else(|| "globally".to_owned(), |g| format!("in guild {g}"));
                println!("registered {n} command(s) {scope}: {}", names.join(" "));
                anyhow::Ok(())
            }
            .await;
            store.close().await?;
            result
        }
    }
}

/// `den campaign template ...`
pub fn campaign(command: crate::cli::CampaignCommand, c: &Config) -> anyhow::Result<()> {
    use crate::cli::{CampaignCommand, TemplateCommand};
    let CampaignCommand::Template { command } = command;
    match command {
        TemplateCommand::Validate { file } => {
            let t = den_campaigns::template::Template::from_file(&file).map_err(anyhow::Error::msg)?;
            println!("ok  {}", t.describe());
            Ok(())
        }
        TemplateCommand::List => {
            let (templates, broken) = c.campaigns.templates();
            println!("{}", den_campaigns::template::Template::default_template().describe());
            for t in templates {
                println!("{}", t.describe());
            }
            for e in broken {
                println!("broken: {e}");
            }
            Ok(())
        }
    }
}

/// `den health`: one HTTP/1.0 GET to the local ops server; succeeds on 200.
pub async fn health(c: &Config, path: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut addr: std::net::SocketAddr = c.ops.listen.parse().context("ops.listen")?;
    // A server on every interface is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(std::time::Duration::from_secs(3), check)
        .await
        .with_context(|| format!("{addr} did not answer in 3 s"))?
        .with_context(|| format!("cannot reach den's ops server at {addr}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).unwrap_or("none");
    anyhow::ensure!(status == "200", "{path} answered {status}: {}", text.split("\r\n\r\n").nth(1).unwrap_or(""));
    println!("ok");
    Ok(())
}
