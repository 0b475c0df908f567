//! `den-bench lambda`: den as AWS Lambda functions, driven through the fake
//! Runtime API with DynamoDB and SQS on moto: cold starts (process start to
//! the first invocation answered), warm invocation times per kind (as
//! Lambda bills them: from the runtime taking the event to its answer),
//! peak memory, and the monthly bill they make at 100,000 answered messages.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use den_core::Clock as _;
use den_storage::aws::{AwsOptions, AwsStore, sdk_config};
use den_storage::{OutgoingMessage, Store as _};
use den_testkit::lambda::{EventSource, FakeLambda, Outcome, SqsMessage, sqs_event, url_event};
use den_testkit::llm::{FakeLlm, Script, Wire};
use serde_json::{Value, json};

use crate::quantile;

/// Options of the Lambda scenario.
#[derive(Debug, clap::Args)]
pub struct LambdaOptions {
    /// The den binary, built with `--features aws` (default: `den` beside this benchmark's executable).
    #[arg(long)]
    den: Option<PathBuf>,
    /// A program that runs the den binary, such as `qemu-aarch64` to drive an
    /// arm64 package on an x86-64 machine (its times are then the emulator's).
    #[arg(long)]
    runner: Option<PathBuf>,
    /// The AWS endpoint to use (moto).
    #[arg(long, env = "DEN_TEST_AWS_ENDPOINT", default_value = "http://127.0.0.1:5599")]
    aws_endpoint: String,
    /// Cold starts of each function.
    #[arg(long, default_value_t = 10)]
    cold_starts: usize,
    /// Warm invocations of each kind.
    #[arg(long, default_value_t = 200)]
    warm: usize,
}

const TOKEN: &str = "bench-token";
const KEY: &str = "sk-bench";
const GRAN: &str = "id = \"grumpy-gran\"\nname = \"Grumpy Gran\"\nnickname = \"Gran\"\nmodelled_on = \"an invented grandmother\"\ntraits = [\"blunt\"]\n";

/// How den is started: the binary, run directly or by a runner.
struct Launch {
    runner: Option<PathBuf>,
    den: PathBuf,
}

impl Launch {
    fn command(&self) -> Command {
        match &self.runner {
            Some(runner) => {
                let mut c = Command::new(runner);
                c.arg(&self.den);
                c
            }
            None => Command::new(&self.den),
        }
    }
}

struct Bench {
    rt: tokio::runtime::Runtime,
    den: Launch,
    dir: tempfile::TempDir,
    fake: den_testkit::FakeDiscord,
    llm: FakeLlm,
    env: Vec<(String, String)>,
    options: AwsOptions,
    /// The worker's event source mapping on the job queue.
    jobs: EventSource,
    user: u64,
    channel: u64,
    /// One channel per warm job, so Discord's per-channel limits never make a job wait.
    channels: Vec<u64>,
}

impl Bench {
    fn new(o: &LambdaOptions) -> anyhow::Result<Self> {
        let den = match &o.den {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("den"),
        };
        anyhow::ensure!(den.exists(), "{} not found: cargo build --release -p den --features aws", den.display());
        // The functions run in a scratch folder, so a relative path would name nothing there.
        let den = Launch { runner: o.runner.clone(), den: den.canonicalize()? };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let fake = rt.block_on(den_testkit::FakeDiscord::start(den_testkit::FakeConfig {
            bot_token: TOKEN.into(),
            ..den_testkit::FakeConfig::default()
        }))?;
        let user = fake.add_user("ada");
        let guild = fake.add_guild("tavern", user);
        let channel = fake.add_text_channel(guild, "general");
        let channels =
            (0..o.warm.max(o.cold_starts)).map(|i| fake.add_text_channel(guild, &format!("room-{i}"))).collect();
        let llm = rt.block_on(FakeLlm::start(Wire::OpenAi, Some(KEY)))?;
        llm.set_default(Script::reply("Sit up straight, dear."));
        let dir = tempfile::tempdir()?;
        let run = format!("{:08x}", std::process::id() ^ Instant::now().elapsed().subsec_nanos());
        let mut options = AwsOptions::new("us-east-1");
        options.endpoint = Some(o.aws_endpoint.clone());
        options.static_credentials = Some(("testing".into(), den_core::Secret::new("testing")));
        options.table = format!("den-bench-{run}");
        options.queue_prefix = format!("bench-{run}-");
        std::fs::create_dir_all(dir.path().join("personas"))?;
        std::fs::write(dir.path().join("personas/grumpy-gran.toml"), GRAN)?;
        let config = format!(
            "[store]\nbackend = \"aws\"\n\n[aws]\nregion = \"us-east-1\"\nendpoint = \"{}\"\ntable = \"{}\"\n\
             queue_prefix = \"{}\"\n\n[llm]\nprimary = \"fake\"\n\n[[llm.provider]]\nname = \"fake\"\n\
             kind = \"openai\"\nbase_url = \"{}\"\nmodel = \"fake-1\"\nkey_env = \"FAKE_LLM_KEY\"\n",
            o.aws_endpoint,
            options.table,
            options.queue_prefix,
            llm.base_url()
        );
        std::fs::write(dir.path().join("den.toml"), config)?;
        let env = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("DISCORD_TOKEN".into(), TOKEN.into()),
            ("DEN_DISCORD__API_PROXY".into(), fake.rest_addr()),
            ("DEN_DISCORD__GATEWAY_URL".into(), fake.gateway_url()),
            ("DEN_DISCORD__PUBLIC_KEY".into(), fake.public_key_hex()),
            ("DEN_PERSONAS__STREAM_EDIT_MS".into(), "0".into()),
            // Every message gets its reply: den's own per-person and per-channel limits stay out of the way.
            ("DEN_PERSONAS__USER_PER_MINUTE".into(), "100000".into()),
            ("DEN_PERSONAS__CHANNEL_PER_MINUTE".into(), "100000".into()),
            ("DEN_OPS__LISTEN".into(), "127.0.0.1:0".into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("FAKE_LLM_KEY".into(), KEY.into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        let bootstrap = den
            .command()
            .args(["aws", "bootstrap"])
            .current_dir(dir.path())
            .env_clear()
            .envs(env.iter().cloned())
            .output()?;
        anyhow::ensure!(
            bootstrap.status.success(),
            "den aws bootstrap: {}",
            String::from_utf8_lossy(&bootstrap.stderr)
        );
        let jobs = rt.block_on(async {
            let sqs = aws_sdk_sqs::Client::new(&sdk_config(&options).await);
            EventSource::new(sqs, &format!("{}den-jobs", options.queue_prefix)).await
        });
        Ok(Self { rt, den, dir, fake, llm, env, options, jobs, user, channel, channels })
    }

    /// Starts the function `handler` of `lambda` as Lambda starts `bootstrap`.
    fn function(&self, lambda: &FakeLambda, handler: &str) -> anyhow::Result<Child> {
        Ok(self
            .den
            .command()
            .current_dir(self.dir.path())
            .env_clear()
            .envs(self.env.iter().cloned())
            .env("AWS_LAMBDA_RUNTIME_API", lambda.runtime_api())
            .env("_HANDLER", handler)
            .stdout(Stdio::null())
            // DEN_BENCH_LOGS=1 shows the functions' logs.
            .stderr(if std::env::var_os("DEN_BENCH_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()?)
    }

    /// Receives up to `want` job-queue messages as the event source mapping does.
    fn receive(&self, want: usize) -> Vec<SqsMessage> {
        self.rt.block_on(self.jobs.receive(want, Duration::from_secs(20)))
    }

    /// Invokes the worker with `batch` as the mapping does; every record must succeed.
    fn deliver(&self, worker: &FakeLambda, batch: &[SqsMessage]) -> anyhow::Result<()> {
        let (outcome, failed) = self.rt.block_on(self.jobs.deliver(worker, batch, Duration::from_secs(30)));
        anyhow::ensure!(matches!(outcome, Outcome::Response(_)), "the worker did not answer: {outcome:?}");
        anyhow::ensure!(failed.is_empty(), "records failed: {failed:?}");
        Ok(())
    }

    /// Sends `n` `status.pong` jobs, each to a channel of its own.
    fn send_pongs(&self, n: usize) -> anyhow::Result<()> {
        let store = self.rt.block_on(AwsStore::connect(self.options.clone(), Arc::new(den_core::SystemClock)))?;
        let now = den_core::SystemClock.now();
        for chunk in self.channels[..n].chunks(10) {
            let messages = chunk
                .iter()
                .map(|channel| {
                    let job =
                        den_core::Job::builder("status.pong", now).payload(json!({"channel_id": channel})).build();
                    OutgoingMessage::new(serde_json::to_string(&job).unwrap_or_default())
                })
                .collect();
            self.rt.block_on(store.queue().send_batch("den-jobs", messages))?;
        }
        Ok(())
    }

    /// What den's enqueue costs on this AWS endpoint alone: the same send (a dedup key, one
    /// message) from this process, `n` times, on a queue of its own.
    fn enqueue_floor(&self, n: usize) -> anyhow::Result<Vec<Duration>> {
        let store = self.rt.block_on(AwsStore::connect(self.options.clone(), Arc::new(den_core::SystemClock)))?;
        let queue = store.queue();
        self.rt.block_on(queue.create_queue(&den_storage::QueueSpec::with_dlq("floor")))?;
        let mut took = Vec::with_capacity(n);
        for i in 0..n {
            let message = OutgoingMessage::new(format!("{{\"floor\": {i}}}")).dedup_key(format!("floor-{i}"));
            let start = Instant::now();
            self.rt.block_on(queue.send_batch("floor", vec![message]))?;
            took.push(start.elapsed());
        }
        // Left queued, they would slow every later `/status` (it counts queues' messages).
        self.rt.block_on(queue.purge("floor"))?;
        Ok(took)
    }

    /// A signed PING as a function-URL event.
    fn ping_event(&self) -> Value {
        let ping = self.fake.signed_ping();
        let headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-signature-ed25519".to_owned(), ping.signature),
            ("x-signature-timestamp".to_owned(), ping.timestamp),
        ];
        url_event("POST", "/interactions", &headers, ping.body.as_bytes())
    }
}

fn millis(d: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn summary(samples: &[Duration]) -> Value {
    let ms = millis(samples);
    let mean = if ms.is_empty() { f64::NAN } else { ms.iter().sum::<f64>() / ms.len() as f64 };
    json!({"n": ms.len(), "p50_ms": quantile(&ms, 0.5), "p90_ms": quantile(&ms, 0.9), "p99_ms": quantile(&ms, 0.99), "max_ms": quantile(&ms, 1.0), "mean_ms": mean})
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Cold starts: a fresh process per invocation, the event already waiting.
fn cold_starts(
    b: &Bench,
    lambda: &Arc<FakeLambda>,
    handler: &str,
    n: usize,
    mut event: impl FnMut() -> anyhow::Result<(Value, Vec<SqsMessage>)>,
) -> anyhow::Result<Vec<Duration>> {
    let mut starts = Vec::with_capacity(n);
    for _ in 0..n {
        let (event, batch) = event()?;
        let waiting = lambda.clone();
        let answer = b.rt.spawn(async move { waiting.invoke(&event, Duration::from_secs(30)).await });
        let started = Instant::now();
        let child = b.function(lambda, handler)?;
        let outcome = b.rt.block_on(answer)?;
        starts.push(started.elapsed());
        stop(child);
        lambda.process_ended();
        anyhow::ensure!(matches!(outcome, Outcome::Response(_)), "cold start of {handler}: {outcome:?}");
        b.rt.block_on(b.jobs.delete(&batch));
    }
    lambda.take_durations();
    Ok(starts)
}

pub fn run(o: &LambdaOptions) -> anyhow::Result<Value> {
    let b = Bench::new(o)?;
    let interactions = Arc::new(b.rt.block_on(FakeLambda::start("den-interactions"))?);
    let worker = Arc::new(b.rt.block_on(FakeLambda::start("den-worker"))?);

    // ---- interactions ----
    let cold_interactions =
        cold_starts(&b, &interactions, "interactions", o.cold_starts, || Ok((b.ping_event(), vec![])))?;
    let function = b.function(&interactions, "interactions")?;
    for _ in 0..o.warm {
        let outcome = b.rt.block_on(interactions.invoke(&b.ping_event(), Duration::from_secs(3)));
        anyhow::ensure!(matches!(outcome, Outcome::Response(_)), "ping: {outcome:?}");
    }
    let pings = interactions.take_durations();

    // ---- worker cold starts (the queue holds only their jobs) ----
    // The worker's cold starts run a `status.pong` job (one Discord call), so they show den's start, not the job.
    b.send_pongs(o.cold_starts)?;
    let cold_worker = cold_starts(&b, &worker, "worker", o.cold_starts, || {
        let batch = b.receive(1);
        Ok((sqs_event(&format!("{}den-jobs", b.options.queue_prefix), &batch), batch))
    })?;
    // /status as Discord sends it, through the function URL: verify, defer, enqueue.
    b.fake.set_interactions_endpoint(Some(format!("{}/interactions", interactions.function_url())));
    for _ in 0..o.warm {
        let token = b.fake.invoke_command(b.user, b.channel, "status", &[]);
        b.rt.block_on(b.fake.wait_until("/status deferred", Duration::from_secs(10), |f| {
            f.interaction(&token).is_some_and(|i| i.callback.is_some())
        }));
    }
    let statuses = interactions.take_durations();
    let floor = b.enqueue_floor(o.warm)?;
    let interactions_peak = peak_rss_mib(function.id());
    stop(function);

    // ---- worker ----
    let function = b.function(&worker, "worker")?;
    // The /status jobs the interactions function enqueued: one per invocation.
    let mut reports = 0;
    while reports < o.warm {
        let batch = b.receive(1);
        anyhow::ensure!(!batch.is_empty(), "the /status jobs ran out after {reports}");
        b.deliver(&worker, &batch)?;
        reports += batch.len();
    }
    let status_jobs = worker.take_durations();
    b.send_pongs(o.warm)?;
    for _ in 0..o.warm {
        let batch = b.receive(1);
        b.deliver(&worker, &batch)?;
    }
    let pong_jobs = worker.take_durations();
    // Persona replies, as the gateway enqueues them for a message that names Gran (the model answers at once).
    let ops = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut gateway = b
        .den
        .command()
        .arg("gateway")
        .current_dir(b.dir.path())
        .env_clear()
        .envs(b.env.iter().cloned())
        .env("DEN_OPS__LISTEN", ops.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ready = crate::ready_within(&b.rt, &format!("http://{ops}/ready"), Duration::from_secs(20));
    anyhow::ensure!(ready, "den gateway did not become ready");
    // Each answered message makes two jobs: the person's message (answered by Gran) and Gran's own
    // message, which the gateway also sees (kept in the transcript); both are billed.
    let (mut person_jobs, mut persona_jobs) = (Vec::new(), Vec::new());
    let replies = o.warm.min(100);
    for i in 0..replies {
        b.fake.post_as(b.user, b.channels[i], &format!("Gran, how do I look today? ({i})"));
        let mut wanted = 2;
        while wanted > 0 {
            let batch = b.receive(1);
            anyhow::ensure!(!batch.is_empty(), "the gateway enqueued too little for message {i}");
            let from_a_bot = serde_json::from_str::<Value>(&batch[0].body)
                .is_ok_and(|job| job["payload"]["message"]["author"]["bot"] == json!(true));
            b.deliver(&worker, &batch)?;
            let took = worker.take_durations();
            if from_a_bot {
                persona_jobs.extend(took)
            } else {
                person_jobs.extend(took)
            }
            wanted -= 1;
        }
    }
    let _ = gateway.kill();
    let _ = gateway.wait();
    let worker_peak = peak_rss_mib(function.id());
    stop(function);
    let model_calls = b.llm.requests().len();
    let answered = b.channels[..replies]
        .iter()
        .filter(|c| b.fake.messages(**c).iter().any(|m| m.author_name == "Grumpy Gran"))
        .count();
    anyhow::ensure!(answered == replies, "Gran answered {answered} of {replies} messages");

    Ok(json!({
        "scenario": "lambda",
        "interactions": {
            "cold_start": summary(&cold_interactions),
            "warm_ping": summary(&pings),
            "warm_status_deferred_and_enqueued": summary(&statuses),
            "enqueue_alone_from_outside": summary(&floor),
            "peak_rss_mib": interactions_peak,
        },
        "worker": {
            "cold_start_pong_job": summary(&cold_worker),
            "warm_status_report_job": summary(&status_jobs),
            "warm_pong_job": summary(&pong_jobs),
            "warm_persona_reply_job_model_instant": summary(&person_jobs),
            "warm_persona_own_message_job": summary(&persona_jobs),
            "replies": replies,
            "model_calls": model_calls,
            "peak_rss_mib": worker_peak,
        },
        "notes": "times are as Lambda bills them (the runtime taking the event to its answer), on this machine, \
                  with DynamoDB and SQS on moto over loopback and Discord and the model as in-process fakes",
    }))
}
