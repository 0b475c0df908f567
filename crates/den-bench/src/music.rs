//! `den-bench music`: den's voice stack (den-music's `Voice` over songbird,
//! DAVE offered, transport encryption on) playing into the stand-in's voice
//! server on 127.0.0.1, which times every packet it decrypts (decoding off,
//! so the listener costs little).
//!
//! - join → first packet: from the voice session being ready (the driver
//!   connected) to the first audio packet arriving, p50/p99.
//! - pacing: one player for `--pacing-secs`; inter-arrival p50/p99/max and
//!   the deficit against 50 packets a second.
//! - capacity: N players at once, passthrough (an Ogg Opus file, no decode or
//!   encode) and transcoding (a WAV file, decoded and encoded), each step's
//!   worst deficit and den's CPU per player.
//!
//! The voice client trusts the stand-in's certificate authority through
//! `SSL_CERT_FILE`; the scenario runs itself again with it set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use den_discord::events::VoiceEvent;
use den_music::voice::{GatewayCommands, Voice};
use den_testkit::discord::voice::VoiceServer;
use serde_json::{Value, json};

use crate::quantile;

/// Options of the music scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct MusicOptions {
    /// Joins measured for join → first packet.
    #[arg(long, default_value_t = 30)]
    joins: u32,
    /// Seconds of the one-player pacing measurement.
    #[arg(long, default_value_t = 60)]
    pacing_secs: u64,
    /// Seconds each capacity step plays.
    #[arg(long, default_value_t = 20)]
    step_secs: u64,
    /// Player counts tried with Opus passed through.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,150,200")]
    passthrough: Vec<usize>,
    /// Player counts tried with decode and re-encode.
    #[arg(long, value_delimiter = ',', default_value = "10,25,50,75")]
    transcode: Vec<usize>,
}

const ME: u64 = 4_242;
const CA_ENV: &str = "SSL_CERT_FILE";

/// Runs the scenario (in a child process that trusts the stand-in's authority).
pub fn run(o: &MusicOptions) -> anyhow::Result<Value> {
    let Some(ca) = std::env::var_os(CA_ENV).filter(|_| std::env::var_os("DEN_BENCH_MUSIC_CHILD").is_some()) else {
        let dir = tempfile::tempdir()?;
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(CA_ENV, dir.path().join("voice-ca.pem"))
            .env("DEN_BENCH_MUSIC_CHILD", "1")
            .stderr(std::process::Stdio::inherit())
            .output()?;
        anyhow::ensure!(out.status.success(), "the music scenario failed");
        return Ok(serde_json::from_slice(&out.stdout)?);
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(measure(o, Path::new(&ca)))
}

/// Stands in for den's gateway: an op 4 gets a call on the voice server and
/// both voice events back, as Discord's gateway would send them.
struct Loopback {
    server: Arc<VoiceServer>,
    voice: OnceLock<Weak<Voice>>,
}

impl GatewayCommands for Loopback {
    fn send(&self, guild: u64, frame: Value) -> bool {
        let Some(voice) = self.voice.get().and_then(Weak::upgrade) else { return false };
        let channel = frame["d"]["channel_id"].as_str().and_then(|c| c.parse::<u64>().ok());
        let server = self.server.clone();
        // Voice holds its lock while it sends: answer from another task, as the gateway would.
        tokio::spawn(async move {
            let Some(channel) = channel else { return server.end(guild) };
            let (session, token) = (format!("s{guild}"), format!("t{}", rand_token()));
            server.grant(guild, channel, ME, &session, &token);
            voice.on_event(&VoiceEvent::State {
                guild,
                channel: Some(channel),
                user: ME,
                session_id: session,
                bot: true,
            });
            voice.on_event(&VoiceEvent::Server { guild, token, endpoint: Some(server.endpoint().to_owned()) });
        });
        true
    }

    fn holds(&self, _guild: u64) -> bool {
        true
    }
}

fn rand_token() -> u64 {
    u64::from(std::process::id()) ^ Instant::now().elapsed().as_nanos() as u64
}

async fn measure(o: &MusicOptions, ca: &Path) -> anyhow::Result<Value> {
    let server = Arc::new(VoiceServer::start().await?);
    std::fs::write(ca, server.ca_pem())?;
    server.set_decode(false);
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join("tone.wav");
    let ogg = dir.path().join("tone.ogg");
    let length = (o.pacing_secs.max(o.step_secs) + 10) * 1000;
    std::fs::write(&wav, den_testkit::audio::tone_wav(440.0, u32::try_from(length)?))?;
    std::fs::write(&ogg, den_testkit::audio::tone_ogg_opus(440.0, u32::try_from(length)?))?;
    let loopback = Arc::new(Loopback { server: server.clone(), voice: OnceLock::new() });
    let (voice, _notices) = Voice::new(loopback.clone(), songbird::Config::default(), den_ops::Metrics::new());
    voice.set_me(ME);
    let _ = loopback.voice.set(Arc::downgrade(&voice));

    let first = first_packets(&voice, &server, &ogg, o.joins).await?;
    let pacing = pacing(&voice, &server, &ogg, o.pacing_secs).await?;
    let mut passthrough = Vec::new();
    for &n in &o.passthrough {
        passthrough.push(capacity(&voice, &server, &ogg, n, o.step_secs).await?);
    }
    let mut transcode = Vec::new();
    for &n in &o.transcode {
        transcode.push(capacity(&voice, &server, &wav, n, o.step_secs).await?);
    }
    let best = |steps: &[Value]| {
        steps
            .iter()
            .filter(|s| s["worst_deficit_pct"].as_f64().is_some_and(|d| d < 1.0))
            .filter_map(|s| s["players"].as_u64())
            .max()
    };
    Ok(json!({
        "scenario": "music",
        "join_to_first_packet_ms": first,
        "pacing_one_player": pacing,
        "passthrough": passthrough,
        "transcode": transcode,
        "most_players_under_1pct_deficit": {"passthrough": best(&passthrough), "transcode": best(&transcode)},
        "cores": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
    }))
}

/// Joins `guild`'s channel, returning when the driver is connected.
async fn join(voice: &Voice, guild: u64) -> anyhow::Result<Instant> {
    voice.join(guild, guild + 1, Duration::from_secs(20)).await?;
    Ok(Instant::now())
}

fn play(voice: &Voice, guild: u64, file: &Path) {
    let input = songbird::input::File::new(PathBuf::from(file));
    voice.with_driver(guild, |d| d.play_only_input(input.into()));
}

async fn first_packets(voice: &Voice, server: &VoiceServer, file: &Path, joins: u32) -> anyhow::Result<Value> {
    let mut samples = Vec::new();
    for i in 0..u64::from(joins) {
        let guild = 1_000_000 + i * 10;
        let ready = join(voice, guild).await?;
        play(voice, guild, file);
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            if let Some(at) = server.call(guild).and_then(|c| c.first_packet) {
                break at;
            }
            anyhow::ensure!(Instant::now() < deadline, "no audio arrived for join {i}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        samples.push(first.saturating_duration_since(ready).as_secs_f64() * 1000.0);
        voice.leave(guild);
    }
    samples.sort_by(f64::total_cmp);
    Ok(json!({"joins": joins, "p50": quantile(&samples, 0.5), "p99": quantile(&samples, 0.99), "max": samples.last()}))
}

/// Packets a call received within `secs` of its first, and the gaps between them (ms).
fn window(server: &VoiceServer, guild: u64, secs: u64) -> (usize, Vec<f64>) {
    let frames = server.heard(guild);
    let end = secs * 1_000_000;
    let inside: Vec<u64> = frames.iter().map(|f| f.at_us).filter(|t| *t < end).collect();
    let gaps = inside.windows(2).map(|w| (w[1] - w[0]) as f64 / 1000.0).collect();
    (inside.len(), gaps)
}

fn deficit_pct(received: usize, secs: u64) -> f64 {
    let expected = (secs * 50) as f64;
    ((expected - received as f64) / expected * 100.0).max(0.0)
}

async fn pacing(voice: &Voice, server: &VoiceServer, file: &Path, secs: u64) -> anyhow::Result<Value> {
    let guild = 2_000_000;
    join(voice, guild).await?;
    play(voice, guild, file);
    tokio::time::sleep(Duration::from_secs(secs + 1)).await;
    let (received, mut gaps) = window(server, guild, secs);
    voice.leave(guild);
    gaps.sort_by(f64::total_cmp);
    Ok(json!({
        "seconds": secs, "packets": received, "deficit_pct": deficit_pct(received, secs),
        "gap_ms": {"p50": quantile(&gaps, 0.5), "p99": quantile(&gaps, 0.99), "max": gaps.last()},
    }))
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = text.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; after the command name they are 11 and 12 (0-based).
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / 100.0)
}

async fn capacity(
    voice: &Voice,
    server: &VoiceServer,
    file: &Path,
    players: usize,
    secs: u64,
) -> anyhow::Result<Value> {
    let base = 3_000_000 + players as u64 * 100_000;
    let guilds: Vec<u64> = (0..players as u64).map(|i| base + i * 10).collect();
    for g in &guilds {
        join(voice, *g).await?;
    }
    let cpu_before = cpu_time();
    let started = Instant::now();
    for g in &guilds {
        play(voice, *g, file);
    }
    tokio::time::sleep(Duration::from_secs(secs + 1)).await;
    let cpu = cpu_time().saturating_sub(cpu_before).as_secs_f64() / started.elapsed().as_secs_f64();
    let mut deficits: Vec<f64> = guilds.iter().map(|g| deficit_pct(window(server, *g, secs).0, secs)).collect();
    let mut gaps: Vec<f64> = guilds.iter().flat_map(|g| window(server, *g, secs).1).collect();
    for g in &guilds {
        voice.leave(*g);
    }
    deficits.sort_by(f64::total_cmp);
    gaps.sort_by(f64::total_cmp);
    Ok(json!({
        "players": players,
        "worst_deficit_pct": deficits.last(),
        "median_deficit_pct": quantile(&deficits, 0.5),
        "gap_p99_ms": quantile(&gaps, 0.99),
        // Includes the stand-in's listener in the same process (decryption only).
        "cpu_cores_busy": cpu,
        "cpu_pct_of_a_core_per_player": cpu * 100.0 / players as f64,
    }))
}
