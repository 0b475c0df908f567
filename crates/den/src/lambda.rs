//! den as an AWS Lambda function (a custom runtime's `bootstrap`), in one of
//! two roles: **interactions** answers Discord's signed HTTP requests from a
//! function URL or an HTTP API exactly as `den interactions` does, and
//! **worker** runs the jobs of an SQS batch with `den worker`'s handlers,
//! answering with the records that must come back.
//!
//! A cold start builds only what an invocation needs: the store's clients
//! (made once and kept while the environment lives), the modules, the
//! router. No ops server, no background loops (Lambda freezes the process
//! between invocations), and no table check.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use den_core::{Clock, SystemClock};
use den_discord::Router;
use den_lambda::sqs::{BatchResponse, SqsEvent, SqsRecord};
use den_lambda::{ErrorReport, Handler, Invocation, RuntimeClient};
use den_ops::Metrics;
use den_storage::{HandedMessage, Metered, Queue, SQS_ID_ATTRIBUTE, Store};
use den_worker::{JobQueue, JobRunner};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::roles::{self, ModuleCx};

/// What a function does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LambdaRole {
    /// Answer Discord's interactions (function URL or HTTP API).
    Interactions,
    /// Run jobs from SQS batches.
    Worker,
}

impl LambdaRole {
    /// The role named by `DEN_LAMBDA_ROLE`, else by the function's handler
    /// setting (`_HANDLER`, which a custom runtime is free to use).
    fn from_env(env: &[(String, String)]) -> anyhow::Result<Self> {
        let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
        let named = var("DEN_LAMBDA_ROLE")
            .or_else(|| var("_HANDLER"))
            .context("which role? set the function's handler (or DEN_LAMBDA_ROLE) to `interactions` or `worker`")?;
        <Self as clap::ValueEnum>::from_str(named, true)
            .map_err(|_| anyhow::anyhow!("unknown Lambda role {named:?}: `interactions` or `worker`"))
    }
}

/// A worker invocation stops its jobs this long before the deadline, so
/// their retries are scheduled before Lambda ends the invocation.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1000);

/// Serves invocations until the execution environment is retired. A start
/// that fails is reported to Lambda as an init error.
pub async fn run(role: Option<LambdaRole>, c: &Config, env: &[(String, String)]) -> anyhow::Result<()> {
    let client = RuntimeClient::from_env(env)?;
    let mut env = env.to_vec();
    let started = async {
        let role = match role {
            Some(role) => role,
            None => LambdaRole::from_env(&env)?,
        };
        forbid_long_running_modules(c)?;
        crate::aws::merge_secret(c, &mut env).await?;
        Parts::build(role, c, &env).await
    }
    .await;
    let parts = match started {
        Ok(parts) => parts,
        Err(e) => {
            let report = ErrorReport::new("den.Init", format!("{e:#}"));
            if let Err(unreported) = client.init_failed(&report).await {
                tracing::warn!(error = %unreported, "could not report the failed start to Lambda");
            }
            return Err(e);
        }
    };
    tracing::info!(role = parts.serves.name(), store = %parts.store.describe(), "den is ready for invocations");
    match &parts.serves {
        Serves::Worker => den_lambda::serve(&client, &Worker::new(&parts, c)).await?,
        Serves::Interactions(app) => den_lambda::serve(&client, &Interactions::new(&parts, app.clone(), c)).await?,
    }
    Ok(())
}

/// Music plays from the process holding the voice connection and the agent
/// needs git and a sandbox: neither has a place in a function.
fn forbid_long_running_modules(c: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(!c.music.enabled, "music runs beside the gateway, not on Lambda: set music.enabled = false here");
    anyhow::ensure!(
        !c.agent.enabled,
        "the coding agent needs git and a sandbox, not on Lambda: set agent.enabled = false here"
    );
    Ok(())
}

/// What both roles are built from.
struct Parts {
    serves: Serves,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    metrics: Metrics,
    modules: Vec<Arc<dyn den_discord::Module>>,
    emf: Emf,
}

/// The role a function was built for, with what only that role needs.
enum Serves {
    /// Interactions, answered by the same endpoint `den interactions` serves.
    Interactions(axum::Router),
    /// Job batches from SQS.
    Worker,
}

impl Serves {
    fn name(&self) -> &'static str {
        match self {
            Serves::Interactions(_) => "interactions",
            Serves::Worker => "worker",
        }
    }
}

/// den's metrics as CloudWatch EMF lines on stdout after each invocation
/// (when `ops.emf_namespace` is set): a frozen process runs no timer.
struct Emf(Option<(Metrics, std::sync::Mutex<den_ops::emf::EmfEncoder>)>);

impl Emf {
    fn new(c: &Config, metrics: &Metrics) -> Self {
        Self(c.ops.emf_encoder().map(|encoder| (metrics.clone(), std::sync::Mutex::new(encoder))))
    }

    fn flush(&self) {
        if let Some((metrics, encoder)) = &self.0 {
            encoder.lock().unwrap_or_else(std::sync::PoisonError::into_inner).write(metrics);
        }
    }
}

impl Parts {
    async fn build(role: LambdaRole, c: &Config, env: &[(String, String)]) -> anyhow::Result<Self> {
        let token = match crate::config::discord_token(&c.discord, env) {
            Ok(token) => Some(token),
            Err(e) if role == LambdaRole::Worker => return Err(e.into()),
            Err(_) => None,
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let metrics = Metrics::new();
        let raw = match c.store.backend.as_str() {
            "aws" => crate::aws::open_store(c, false).await?,
            _ => roles::open_store(c).await?,
        };
        let store: Arc<dyn Store> = Arc::new(Metered::new(raw, Arc::new(metrics.clone())));
        let queue = store.queue();
        // The queue is declared by the template or `den aws bootstrap`; a send reads its declaration.
        let spec = c.queue.spec(&c.worker);
        let jobs = JobQueue::new(queue.clone(), spec.name.clone(), metrics.clone());
        let (egress, public_key) = roles::egress(c, token, &store).await?;
        let never = CancellationToken::new();
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
            shutdown: &never,
            background: false,
        };
        let modules = roles::modules(&cx).await?;
        let serves = match role {
            LambdaRole::Interactions => {
                let router = Arc::new(Router::new(modules.clone(), jobs, clock.clone(), metrics.clone()));
                Serves::Interactions(endpoint(c, public_key, router, clock)?)
            }
            LambdaRole::Worker => Serves::Worker,
        };
        let emf = Emf::new(c, &metrics);
        Ok(Self { serves, store, queue, metrics, modules, emf })
    }
}

/// The same endpoint `den interactions` serves.
fn endpoint(
    c: &Config,
    public_key: Option<String>,
    router: Arc<Router>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<axum::Router> {
    let key = public_key.context("the interactions function needs discord.public_key")?;
    let key =
        den_discord::interactions::parse_public_key(&key).map_err(|e| anyhow::anyhow!("discord.public_key: {e}"))?;
    Ok(den_discord::interactions::endpoint(&c.interactions.path, key, router, clock))
}

/// The interactions role: each invocation is one HTTP request.
struct Interactions<'a> {
    app: axum::Router,
    path: String,
    emf: &'a Emf,
}

impl<'a> Interactions<'a> {
    fn new(parts: &'a Parts, app: axum::Router, c: &Config) -> Self {
        Self { app, path: c.interactions.path.clone(), emf: &parts.emf }
    }
}

impl Handler for Interactions<'_> {
    async fn handle(&self, invocation: &Invocation) -> Result<Vec<u8>, ErrorReport> {
        let answer = den_lambda::http::answer(self.app.clone(), &self.path, &invocation.body).await;
        self.emf.flush();
        serde_json::to_vec(&answer).map_err(|e| ErrorReport::new("den.Encode", e.to_string()))
    }
}

/// The worker role: each invocation is a batch of jobs from the job queue.
struct Worker<'a> {
    emf: &'a Emf,
    runner: JobRunner,
    queue: Arc<dyn Queue>,
    /// The job queue's SQS name (prefix included), as event source ARNs end.
    sqs_name: String,
    job_timeout: Duration,
}

impl<'a> Worker<'a> {
    fn new(parts: &'a Parts, c: &Config) -> Self {
        let spec = c.queue.spec(&c.worker);
        let handlers = roles::handlers_of(&parts.modules, |kind| !kind.starts_with(roles::MUSIC_KINDS));
        let config = c.worker.pool_config();
        let sqs_name = format!("{}{}", c.aws.queue_prefix, spec.name);
        let runner = JobRunner::new(parts.queue.clone(), spec, handlers, parts.metrics.clone(), config.backoff);
        Self { emf: &parts.emf, runner, queue: parts.queue.clone(), sqs_name, job_timeout: config.job_timeout }
    }

    /// Runs one record's job; true when the record must come back.
    async fn run_record(&self, record: &SqsRecord, limit: Duration) -> bool {
        if record.queue_name() != self.sqs_name {
            tracing::error!(queue = record.queue_name(), expected = %self.sqs_name, "a record from a queue this function does not serve");
            return true;
        }
        let Some(id) = record.attribute(SQS_ID_ATTRIBUTE) else {
            // Not sent by den: left to the queue's redrive policy.
            tracing::warn!(message_id = %record.message_id, "a record without den's id; it goes back to the queue");
            return true;
        };
        let handed = HandedMessage {
            handle: record.receipt_handle.clone(),
            message_id: id.to_owned(),
            body: record.body.clone(),
        };
        let queue = &self.runner.spec().name;
        match self.queue.adopt(queue, &handed).await {
            Ok(Some(delivery)) => self.runner.run(delivery, limit, &CancellationToken::new()).await.comes_back(),
            // Acked, deleted or dead-lettered already: Lambda may delete this copy.
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, message_id = %id, "could not claim the record; it goes back to the queue");
                true
            }
        }
    }
}

impl Handler for Worker<'_> {
    async fn handle(&self, invocation: &Invocation) -> Result<Vec<u8>, ErrorReport> {
        let event: SqsEvent = serde_json::from_slice(&invocation.body)
            .map_err(|e| ErrorReport::new("den.InvalidEvent", format!("not an SQS batch: {e}")))?;
        // A job still running near the deadline is stopped and retried later, not cut off mid-way by Lambda.
        let limit = self.job_timeout.min(invocation.remaining().saturating_sub(DEADLINE_MARGIN));
        let runs = event.records.iter().map(|record| async move { (record, self.run_record(record, limit).await) });
        let results = futures_util::future::join_all(runs).await;
        let failed = results.into_iter().filter(|(_, back)| *back).map(|(r, _)| r.message_id.clone());
        let answer = BatchResponse::failing(failed);
        self.emf.flush();
        if !answer.batch_item_failures.is_empty() {
            tracing::info!(
                records = event.records.len(),
                failed = answer.batch_item_failures.len(),
                "batch done; some records go back"
            );
        }
        serde_json::to_vec(&answer).map_err(|e| ErrorReport::new("den.Encode", e.to_string()))
    }
}
