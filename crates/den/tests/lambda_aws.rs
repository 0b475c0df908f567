//! den as two AWS Lambda functions (the real binary started as a custom
//! runtime's `bootstrap`, driven through the fake Runtime API): the
//! interactions function behind a function URL or an HTTP API, and the
//! worker function fed SQS batches as an event source mapping would, with
//! SQS and DynamoDB on moto (`DEN_TEST_AWS_ENDPOINT`).
#![cfg(feature = "aws")]

mod support;

use std::time::Duration;

use den_storage::aws::{AwsOptions, AwsStore, sdk_config};
use den_storage::{OutgoingMessage, Store as _};
use den_testkit::lambda::{EventSource, FakeLambda, Outcome, SqsMessage, http_api_event, url_event};
use den_testkit::llm::{FakeLlm, Script, Wire};
use serde_json::{Value, json};
use support::{Discord, Running, Scratch};

const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "sk-serverless";

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

fn aws_options(run: &str) -> AwsOptions {
    let mut options = AwsOptions::new("us-east-1");
    options.endpoint = Some(support::aws_endpoint());
    options.static_credentials = Some(("testing".into(), den_core::Secret::new("testing")));
    options.table = format!("den-lambda-{run}");
    options.queue_prefix = format!("lambda-{run}-");
    options
}

/// den's AWS resources, a Discord, a model, and the two functions' Lambda services.
struct Serverless {
    discord: Discord,
    llm: FakeLlm,
    scratch: Scratch,
    env: Vec<(String, String)>,
    options: AwsOptions,
    /// The worker function's event source mapping on the job queue.
    jobs: EventSource,
    interactions: FakeLambda,
    worker: FakeLambda,
}

impl Serverless {
    fn new() -> Self {
        let discord = Discord::start();
        let llm = discord.rt.block_on(FakeLlm::start(Wire::OpenAi, Some(KEY))).unwrap();
        let scratch = Scratch::new();
        let run = unique();
        let options = aws_options(&run);
        std::fs::create_dir_all(scratch.path().join("personas")).unwrap();
        std::fs::write(scratch.path().join("personas/grumpy-gran.toml"), support::GRAN).unwrap();
        let config = format!(
            "[store]\nbackend = \"aws\"\n\n[aws]\nregion = \"us-east-1\"\nendpoint = \"{}\"\ntable = \"{}\"\n\
             queue_prefix = \"{}\"\n\n[llm]\nprimary = \"fake\"\nmax_attempts = 1\n\n\
             [[llm.provider]]\nname = \"fake\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"fake-1\"\n\
             key_env = \"FAKE_LLM_KEY\"\n",
            support::aws_endpoint(),
            options.table,
            options.queue_prefix,
            llm.base_url()
        );
        std::fs::write(scratch.path().join("den.toml"), config).unwrap();
        let mut env = discord.env();
        env.extend([
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("FAKE_LLM_KEY".into(), KEY.into()),
            ("DEN_DISCORD__PUBLIC_KEY".into(), discord.fake.public_key_hex()),
            ("DEN_PERSONAS__STREAM_EDIT_MS".into(), "0".into()),
            // Two deliveries, then the DLQ; retries come back within a second.
            ("DEN_QUEUE__MAX_RECEIVE_COUNT".into(), "2".into()),
            ("DEN_WORKER__BACKOFF_BASE_MS".into(), "200".into()),
            ("DEN_WORKER__BACKOFF_MAX_SECS".into(), "1".into()),
        ]);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = scratch.output(&["aws", "bootstrap"], &pairs);
        assert!(out.status.success(), "{}", support::stderr(&out));
        let jobs = discord.rt.block_on(async {
            let sqs = aws_sdk_sqs::Client::new(&sdk_config(&options).await);
            EventSource::new(sqs, &format!("{}den-jobs", options.queue_prefix)).await
        });
        let interactions = discord.rt.block_on(FakeLambda::start("den-interactions")).unwrap();
        let worker = discord.rt.block_on(FakeLambda::start("den-worker")).unwrap();
        Self { discord, llm, scratch, env, options, jobs, interactions, worker }
    }

    /// Starts the function served by `lambda` as Lambda starts a custom
    /// runtime: `bootstrap` with no arguments, the role in `_HANDLER`.
    fn function(&self, lambda: &FakeLambda, handler: &str, without: &[&str]) -> Running {
        let api = lambda.runtime_api();
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .filter(|(k, _)| !without.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend([("AWS_LAMBDA_RUNTIME_API", api.as_str()), ("_HANDLER", handler)]);
        self.scratch.spawn(&[], &env, "den is ready for invocations")
    }

    fn interactions_function(&self) -> Running {
        // Interactions need no bot token: the signature is checked with the public key.
        self.function(&self.interactions, "interactions", &["DISCORD_TOKEN"])
    }

    fn worker_function(&self) -> Running {
        self.function(&self.worker, "worker", &[])
    }

    /// Receives up to `want` messages of the job queue as the event source mapping does.
    fn receive(&self, want: usize, within: Duration) -> Vec<SqsMessage> {
        self.discord.rt.block_on(self.jobs.receive(want, within))
    }

    /// Invokes the worker function with `batch` as the mapping does; returns
    /// the outcome and the records named as failed.
    fn deliver(&self, batch: &[SqsMessage], timeout: Duration) -> (Outcome, Vec<String>) {
        self.discord.rt.block_on(self.jobs.deliver(&self.worker, batch, timeout))
    }

    fn store(&self) -> AwsStore {
        self.discord
            .rt
            .block_on(AwsStore::connect(self.options.clone(), std::sync::Arc::new(den_core::SystemClock)))
            .unwrap()
    }

    /// Sends jobs straight to den's job queue.
    fn send_jobs(&self, jobs: &[(&str, Value)]) {
        let store = self.store();
        let now = den_core::Timestamp(
            i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis())
                .unwrap(),
        );
        let messages = jobs
            .iter()
            .map(|(kind, payload)| {
                let job = den_core::Job::builder(*kind, now).payload(payload.clone()).build();
                OutgoingMessage::new(serde_json::to_string(&job).unwrap())
            })
            .collect();
        self.discord.rt.block_on(store.queue().send_batch("den-jobs", messages)).unwrap();
    }

    fn channel_texts(&self, channel: u64) -> Vec<String> {
        self.discord.fake.messages(channel).into_iter().map(|m| m.content).collect()
    }
}

fn signed_headers(signature: &str, timestamp: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Signature-Ed25519".into(), signature.into()),
        ("X-Signature-Timestamp".into(), timestamp.into()),
        ("User-Agent".into(), "Discord-Interactions/1.0 (+https://discord.com)".into()),
    ]
}

#[test]
fn interactions_function_answers_pings_refuses_forgeries_and_defers_status_which_the_worker_function_finishes() {
    let den = Serverless::new();
    let _interactions = den.interactions_function();
    let _worker = den.worker_function();

    let ping = den.discord.fake.signed_ping();
    let headers = signed_headers(&ping.signature, &ping.timestamp);
    let forged_body = ping.body.replace("\"type\":1", "\"type\":1 ");
    for (shape, make) in [
        ("function URL", url_event as fn(&str, &str, &[(String, String)], &[u8]) -> Value),
        ("HTTP API", http_api_event),
    ] {
        let answer = den.discord.rt.block_on(
            den.interactions
                .invoke(&make("POST", "/interactions", &headers, ping.body.as_bytes()), Duration::from_secs(3)),
        );
        let answer = answer.json();
        assert_eq!(answer["statusCode"], 200, "{shape}: {answer}");
        assert_eq!(
            serde_json::from_str::<Value>(answer["body"].as_str().unwrap()).unwrap(),
            json!({"type": 1}),
            "{shape}"
        );
        assert!(
            answer["headers"]["content-type"].as_str().unwrap().starts_with("application/json"),
            "{shape}: {answer}"
        );

        let forged = make("POST", "/interactions", &headers, forged_body.as_bytes());
        let refused = den.discord.rt.block_on(den.interactions.invoke(&forged, Duration::from_secs(3))).json();
        assert_eq!(refused["statusCode"], 401, "{shape}: a body that is not what was signed: {refused}");
    }

    // Discord posts /status to the function URL; the answer defers it and the worker function finishes it.
    den.discord.fake.set_interactions_endpoint(Some(format!("{}/interactions", den.interactions.function_url())));
    let status = den.discord.fake.invoke_command(den.discord.user, den.discord.channel, "status", &[]);
    den.discord.wait_until("/status deferred", WAIT, |f| f.interaction(&status).is_some_and(|i| i.callback.is_some()));
    let (kind, data) = den.discord.fake.interaction(&status).unwrap().callback.unwrap();
    assert_eq!((kind, data["flags"].as_u64()), (5, Some(64)), "deferred, ephemeral");

    let batch = den.receive(1, WAIT);
    assert_eq!(batch.len(), 1, "the interactions function enqueued one job");
    let (outcome, failed) = den.deliver(&batch, Duration::from_secs(10));
    assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}");
    assert!(failed.is_empty(), "{failed:?}");
    den.discord.wait_until("/status finished", WAIT, |f| {
        f.interaction(&status).and_then(|i| i.original).and_then(|m| f.message(m)).is_some_and(|m| m.edits > 0)
    });
    let i = den.discord.fake.interaction(&status).unwrap();
    let original = den.discord.fake.message(i.original.unwrap()).unwrap();
    assert!(original.content.contains("is up") && original.content.contains("den-jobs"), "{}", original.content);
    assert!(den.discord.fake.violations().is_empty(), "{:?}", den.discord.fake.violations());
}

#[test]
fn a_batch_with_one_failing_job_names_only_that_record_and_its_last_failure_goes_to_the_dlq() {
    let den = Serverless::new();
    let _worker = den.worker_function();
    let channel = den.discord.channel;
    den.send_jobs(&[
        ("status.pong", json!({"channel_id": channel})),
        ("status.pong", json!({"channel_id": 999_999_999_u64})),
        ("status.pong", json!({"channel_id": channel})),
    ]);
    let batch = den.receive(3, WAIT);
    assert_eq!(batch.len(), 3);
    let unknown_channel: Vec<String> =
        batch.iter().filter(|m| m.body.contains("999999999")).map(|m| m.message_id.clone()).collect();

    let (outcome, failed) = den.deliver(&batch, Duration::from_secs(20));
    assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}");
    assert_eq!(failed, unknown_channel, "only the job whose channel does not exist comes back");
    assert_eq!(den.channel_texts(channel), ["pong", "pong"]);

    // It returns after its backoff; on its last delivery den dead-letters it and Lambda may delete it.
    let again = den.receive(1, WAIT);
    assert_eq!(again.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(), unknown_channel);
    let (_, failed) = den.deliver(&again, Duration::from_secs(20));
    assert!(failed.is_empty(), "dead-lettered, not failed again: {failed:?}");
    let store = den.store();
    let dead = den.discord.rt.block_on(store.queue().peek("den-jobs-dlq", 10, None)).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body.contains("999999999"));
    assert!(den.receive(1, Duration::from_secs(2)).is_empty(), "nothing else is left in the queue");
    assert_eq!(den.channel_texts(channel), ["pong", "pong"], "the jobs that succeeded ran once");
}

#[test]
fn a_job_outliving_the_function_deadline_is_stopped_reported_and_retried_not_half_done_twice() {
    let den = Serverless::new();
    let pairs: Vec<(&str, &str)> = den.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gateway = den.scratch.start("gateway", &pairs);
    gateway.wait_ready(WAIT);
    let _worker = den.worker_function();

    // The model takes 6 s to start answering the first time, then answers at once.
    den.llm.push(Script::reply("Slow words.").ttft(Duration::from_secs(6)));
    den.llm.push(Script::reply("Sit up straight, dear."));
    den.discord.fake.post_as(den.discord.user, den.discord.channel, "Gran, how do I look?");
    let batch = den.receive(1, WAIT);
    assert_eq!(batch.len(), 1, "the gateway enqueued the reply");

    // A 3 s function: den stops the job before the deadline and says the record must come back.
    let (outcome, failed) = den.deliver(&batch, Duration::from_secs(3));
    assert!(matches!(outcome, Outcome::Response(_)), "answered before the deadline, not timed out: {outcome:?}");
    assert_eq!(failed, [batch[0].message_id.clone()]);

    let again = den.receive(1, WAIT);
    assert_eq!(again.len(), 1, "the job came back");
    let (_, failed) = den.deliver(&again, Duration::from_secs(20));
    assert!(failed.is_empty(), "{failed:?}");
    let gran: Vec<_> = den
        .discord
        .fake
        .messages(den.discord.channel)
        .into_iter()
        .filter(|m| m.author_name == "Grumpy Gran")
        .map(|m| m.content)
        .collect();
    assert_eq!(gran, ["Sit up straight, dear."], "one reply, from the retry; nothing of the stopped run");
    assert_eq!(den.llm.requests().len(), 2);
}

#[test]
fn a_function_that_cannot_start_reports_an_init_error_and_exits() {
    let den = Serverless::new();
    let api = den.worker.runtime_api();
    let mut env: Vec<(&str, &str)> =
        den.env.iter().filter(|(k, _)| k != "DISCORD_TOKEN").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([("AWS_LAMBDA_RUNTIME_API", api.as_str()), ("_HANDLER", "worker")]);
    let out = den.scratch.output(&[], &env);
    assert!(!out.status.success());
    let (kind, report) = den.worker.init_error().expect("an init error was reported");
    assert_eq!(kind, "den.Init");
    assert!(report["errorMessage"].as_str().unwrap().contains("DISCORD_TOKEN"), "{report}");
    assert_eq!(den.worker.handed_out(), 0, "no invocation was taken");

    // A handler naming no role is refused the same way.
    let mut env: Vec<(&str, &str)> = den.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([("AWS_LAMBDA_RUNTIME_API", api.as_str()), ("_HANDLER", "bootstrap.handler")]);
    let out = den.scratch.output(&[], &env);
    assert!(!out.status.success());
    let (_, report) = den.worker.init_error().unwrap();
    assert!(report["errorMessage"].as_str().unwrap().contains("unknown Lambda role"), "{report}");

    // An interactions function without the public key (nor a token to ask Discord for it) says so at start.
    let mut env: Vec<(&str, &str)> = den
        .env
        .iter()
        .filter(|(k, _)| !["DISCORD_TOKEN", "DEN_DISCORD__PUBLIC_KEY"].contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let api = den.interactions.runtime_api();
    env.extend([("AWS_LAMBDA_RUNTIME_API", api.as_str()), ("_HANDLER", "interactions")]);
    let out = den.scratch.output(&[], &env);
    assert!(!out.status.success());
    let (_, report) = den.interactions.init_error().expect("an init error was reported");
    assert!(report["errorMessage"].as_str().unwrap().contains("discord.public_key"), "{report}");
}
