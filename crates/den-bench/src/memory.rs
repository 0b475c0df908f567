//! `den-bench memory`: resident memory of an idle `den run`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

/// Options of the memory scenario.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The den binary (default: `den` beside this benchmark's executable).
    #[arg(long)]
    den: Option<PathBuf>,
    /// Seconds to stay idle before reading the memory.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Resident memory that is den's alone (heap, stacks): RSS minus the pages of
/// the executable and libraries, which are shared with the page cache.
fn anonymous_kib(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let line =
        rollup.lines().find(|l| l.starts_with("Anonymous:")).ok_or_else(|| anyhow::anyhow!("no Anonymous line"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

pub fn run(o: &Options) -> anyhow::Result<serde_json::Value> {
    let den = match &o.den {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("den"),
    };
    anyhow::ensure!(den.exists(), "{} not found: build it with `cargo build --release -p den`", den.display());
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // den needs a Discord to be ready: the fake, on this process's own threads.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let fake = rt.block_on(den_testkit::FakeDiscord::start(den_testkit::FakeConfig {
        bot_token: "bench-token".into(),
        ..den_testkit::FakeConfig::default()
    }))?;
    let owner = fake.add_user("owner");
    fake.add_guild("bench", owner);
    let mut child = Command::new(&den)
        .arg("run")
        .current_dir(dir.path())
        .env("DISCORD_TOKEN", "bench-token")
        .env("DEN_DISCORD__API_PROXY", fake.rest_addr())
        .env("DEN_DISCORD__GATEWAY_URL", fake.gateway_url())
        .env("DEN_OPS__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let healthy = crate::ready_within(&rt, &format!("http://127.0.0.1:{port}/ready"), Duration::from_secs(20));
    let result = (|| {
        anyhow::ensure!(healthy, "den run did not become ready");
        std::thread::sleep(Duration::from_secs(o.idle_seconds));
        let idle = rss_kib(child.id())?;
        let anonymous = anonymous_kib(child.id())?;
        // One scrape, as Prometheus would, then idle again.
        rt.block_on(async { reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.map(|_| ()) })?;
        std::thread::sleep(Duration::from_secs(1));
        let after_scrape = rss_kib(child.id())?;
        Ok(json!({
            "scenario": "memory",
            "idle_rss_mib": idle as f64 / 1024.0,
            "idle_anonymous_mib": anonymous as f64 / 1024.0,
            "rss_after_scrape_mib": after_scrape as f64 / 1024.0,
            "idle_seconds": o.idle_seconds,
            "target_mib": 15,
        }))
    })();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    result
}
