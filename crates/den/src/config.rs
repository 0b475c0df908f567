//! den's configuration: `den.toml`, environment overrides, secrets.
//!
//! Precedence, lowest first: built-in defaults, the file, `DEN_*` variables.
//! A variable `DEN_<SECTION>__<KEY>` overrides `key` in `[section]`, for
//! example `DEN_WORKER__CONCURRENCY=32`. Secrets are never read from the file:
//! they come from an environment variable or from a file named in the config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use den_core::Secret;
use serde::{Deserialize, Serialize};

/// Prefix of override variables.
pub const ENV_PREFIX: &str = "DEN_";
/// Variable naming the config file.
pub const CONFIG_ENV: &str = "DEN_CONFIG";
/// File read from the working directory when no path is given.
pub const DEFAULT_FILE: &str = "den.toml";

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where data lives.
    pub store: StoreConfig,
    /// The job queue.
    pub queue: QueueConfig,
    /// The worker pool.
    pub worker: WorkerSection,
    /// The ops server.
    pub ops: OpsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Discord connection.
    pub discord: DiscordConfig,
    /// The HTTP interactions endpoint.
    pub interactions: InteractionsConfig,
    /// Language models.
    pub llm: LlmConfig,
    /// AI Roast Den personas.
    pub personas: PersonasSection,
    /// Channelwright campaigns.
    pub campaigns: CampaignsSection,
    /// The coding agent.
    pub agent: AgentSection,
    /// Music (TimmyBot).
    pub music: MusicSection,
    /// AWS: DynamoDB, SQS, Secrets Manager (with the `aws` cargo feature).
    pub aws: AwsSection,
}

/// `[aws]`: where den's AWS resources are.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsSection {
    /// The region of every AWS service den uses; required when any is used.
    pub region: String,
    /// An endpoint override (a VPC endpoint, LocalStack, moto).
    pub endpoint: Option<String>,
    /// The DynamoDB table holding every den table and the queue ledger.
    pub table: String,
    /// Prefix of den's SQS queue names.
    pub queue_prefix: String,
    /// A Secrets Manager secret (name or ARN) holding a JSON object such as
    /// `{"DISCORD_TOKEN": "..."}`: its keys read as environment variables,
    /// under the real environment, which wins.
    pub secret: Option<String>,
}

impl Default for AwsSection {
    fn default() -> Self {
        Self { region: String::new(), endpoint: None, table: "den".into(), queue_prefix: String::new(), secret: None }
    }
}

/// `[campaigns]`: Channelwright.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CampaignsSection {
    /// Run the campaigns module.
    pub enabled: bool,
    /// Folder of extra templates (`*.toml`, `*.json`, `*.md`), offered beside the default.
    pub templates_dir: PathBuf,
    /// A role whose members may add, delete and archive campaigns without Manage Channels.
    pub manager_role: Option<u64>,
}

impl Default for CampaignsSection {
    fn default() -> Self {
        Self { enabled: true, templates_dir: PathBuf::from("campaign-templates"), manager_role: None }
    }
}

impl CampaignsSection {
    /// The templates of `templates_dir` (a missing folder has none), and what is wrong with the others.
    #[must_use]
    pub fn templates(&self) -> (Vec<den_campaigns::template::Template>, Vec<String>) {
        let Ok(entries) = std::fs::read_dir(&self.templates_dir) else { return (vec![], vec![]) };
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for p in paths {
            if !matches!(p.extension().and_then(|e| e.to_str()), Some("toml" | "json" | "md")) {
                continue;
            }
            match den_campaigns::template::Template::from_file(&p) {
                Ok(t) => ok.push(t),
                Err(e) => bad.push(e),
            }
        }
        (ok, bad)
    }
}

/// `[music]`: TimmyBot, per-server queues played in voice channels.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MusicSection {
    /// Run the music module. Off by default: it declares a queue of its own
    /// (`music`), which a deployment's permissions must allow.
    pub enabled: bool,
    /// A folder of audio files people can search with `/play words`.
    pub library: Option<PathBuf>,
    /// Let links reach private and loopback addresses (a radio on the LAN; tests).
    /// Off: den refuses links into its own network.
    pub allow_private_urls: bool,
    /// Leave a voice channel after this long with nothing playing or nobody listening (0 stays);
    /// a server's `/music-settings leave-after` overrides it.
    pub leave_after_secs: u64,
    /// Only servers the operator approved (`den music allow`, `/music-admin`) may use music.
    pub allowlist: bool,
    /// Discord users who may approve servers with `/music-admin`.
    pub operators: Vec<u64>,
    /// The server in which `/music-admin` works.
    pub operator_guild: Option<u64>,
    /// Play pages of YouTube, SoundCloud, Bandcamp and the like, and search
    /// YouTube, through yt-dlp (which the operator installs; off by default).
    pub ytdlp: bool,
    /// The yt-dlp program (found on the PATH when it has no slash).
    pub ytdlp_path: String,
}

impl Default for MusicSection {
    fn default() -> Self {
        Self {
            enabled: false,
            library: None,
            allow_private_urls: false,
            leave_after_secs: 300,
            allowlist: false,
            operators: Vec::new(),
            operator_guild: None,
            ytdlp: false,
            ytdlp_path: "yt-dlp".into(),
        }
    }
}

/// `[agent]`: the coding agent in Discord.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// Run the agent module. Off by default: it runs model-written code (in a sandbox) and needs git,
    /// bubblewrap and its own queue; the playground turns it on.
    pub enabled: bool,
    /// Where the servers' workspaces live (default: `agent-workspaces` beside the store).
    pub workspaces_dir: Option<PathBuf>,
    /// The branch sessions start from and merge into.
    pub base_branch: String,
    /// What a thread's branch merges into: `server` (one workspace per server, the default) or `thread` (each
    /// thread a workspace of its own, started from the server's).
    pub workspace: den_agent::discord::workspaces::Scope,
    /// Turns per run at most, by the task's size (`{ small = 10, medium = 20, large = 35 }`).
    pub max_turns: den_agent::size::Turns,
    /// Longest a run may take, in minutes.
    pub max_minutes: u64,
    /// Tokens per server per UTC day for the agent (none: no limit).
    pub daily_tokens: Option<u64>,
    /// Members of this role may merge or reject any session's branch.
    pub approver_role: Option<u64>,
    /// Tiers of models, weakest first, each a list of `[[llm.provider]]` names: the first is
    /// the tier's model, the second its fallback. Default: the primary, then the fallback.
    pub tiers: Vec<Vec<String>>,
    /// `@alias` → the tier (1-based) a task starting with it runs on.
    pub aliases: std::collections::BTreeMap<String, usize>,
    /// Where the agent's events are POSTed as JSON (none: a log line and a metric each).
    pub events_webhook: Option<String>,
    /// Seconds a turn holds its thread, renewed while it works; a killed worker's run resumes after it.
    pub lease_secs: u64,
    /// The first sandbox user id of sessions; two dens on one machine need ranges that do not meet.
    pub first_uid: u32,
    /// Channels where the agent takes tasks from the start (besides those enabled with `/agent-channel`).
    pub channels: Vec<u64>,
    /// Folders under which `/workspace seed path:` may read (none: seeding from a path is off).
    pub seed_roots: Vec<PathBuf>,
    /// MCP servers whose tools the agent is offered (`[[agent.mcp]]`: `name`, and `command` or `url`).
    pub mcp: Vec<den_agent::mcp::McpServer>,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            enabled: false,
            workspaces_dir: None,
            base_branch: "main".into(),
            workspace: den_agent::discord::workspaces::Scope::Server,
            max_turns: den_agent::size::Turns::default(),
            max_minutes: 30,
            daily_tokens: None,
            approver_role: None,
            tiers: vec![],
            aliases: std::collections::BTreeMap::new(),
            events_webhook: None,
            lease_secs: 60,
            first_uid: 100_000,
            channels: vec![],
            seed_roots: vec![],
            mcp: vec![],
        }
    }
}

/// `[personas]`: AI Roast Den.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersonasSection {
    /// Run the personas module.
    pub enabled: bool,
    /// Folder of persona files (`*.toml`), reloaded when they change.
    pub dir: PathBuf,
    /// The memory database (transcripts and facts); default: `memory.db` beside the store.
    pub memory_path: Option<PathBuf>,
    /// Prefix of `!ask` and `!roast`.
    pub prefix: String,
    /// Persona messages in a row without a person before they stop answering each other.
    pub max_persona_streak: u32,
    /// Seconds between persona-to-persona replies.
    pub persona_gap_secs: u64,
    /// Persona-to-persona replies per channel per hour.
    pub hourly_persona_cap: u32,
    /// Requests per person per minute.
    pub user_per_minute: u32,
    /// Persona replies per channel per minute.
    pub channel_per_minute: u32,
    /// Least milliseconds between edits of a streaming reply (0: post only the finished reply).
    pub stream_edit_ms: u64,
    /// Transcript lines offered to the model.
    pub transcript_lines: usize,
    /// Most prompt tokens.
    pub prompt_budget_tokens: usize,
    /// Most reply tokens.
    pub max_reply_tokens: u32,
    /// Extra output-filter patterns (regular expressions, case-insensitive).
    pub deny_patterns: Vec<String>,
    /// Replies an `/influence` directive lasts.
    pub directive_turns: u32,
    /// Messages of people per channel between memory consolidations (0: never).
    pub consolidate_every: u64,
    /// `full`, `brief` (for small models) or `auto`: brief when llm.primary runs in den's process.
    pub prompt_style: String,
}

impl Default for PersonasSection {
    fn default() -> Self {
        let d = den_personas::PersonasConfig::default();
        Self {
            enabled: true,
            dir: PathBuf::from("personas"),
            memory_path: None,
            prefix: d.prefix,
            max_persona_streak: d.max_persona_streak,
            persona_gap_secs: d.persona_gap.as_secs(),
            hourly_persona_cap: d.hourly_persona_cap,
            user_per_minute: d.user_per_minute,
            channel_per_minute: d.channel_per_minute,
            stream_edit_ms: 1_000,
            transcript_lines: d.transcript_lines,
            prompt_budget_tokens: d.prompt_budget_tokens,
            max_reply_tokens: d.max_reply_tokens,
            deny_patterns: d.deny_patterns,
            directive_turns: d.directive_turns,
            consolidate_every: d.consolidate_every,
            prompt_style: "auto".into(),
        }
    }
}

impl Config {
    /// The personas module's settings.
    #[must_use]
    pub fn personas_config(&self) -> den_personas::PersonasConfig {
        let p = &self.personas;
        let limit = |n: u64| (n > 0).then_some(n);
        den_personas::PersonasConfig {
            prefix: p.prefix.clone(),
            max_persona_streak: p.max_persona_streak,
            persona_gap: std::time::Duration::from_secs(p.persona_gap_secs),
            hourly_persona_cap: p.hourly_persona_cap,
            user_per_minute: p.user_per_minute,
            channel_per_minute: p.channel_per_minute,
            stream_edit_interval: (p.stream_edit_ms > 0).then(|| std::time::Duration::from_millis(p.stream_edit_ms)),
            transcript_lines: p.transcript_lines,
            prompt_budget_tokens: p.prompt_budget_tokens,
            max_reply_tokens: p.max_reply_tokens,
            deny_patterns: p.deny_patterns.clone(),
            directive_turns: p.directive_turns,
            consolidate_every: p.consolidate_every,
            prompt_style: match p.prompt_style.as_str() {
                "brief" => den_personas::prompt::PromptStyle::Brief,
                "auto" if self.llm.primary_is_in_process() => den_personas::prompt::PromptStyle::Brief,
                _ => den_personas::prompt::PromptStyle::Full,
            },
            budget: den_llm::ledger::Budget {
                per_guild: limit(self.llm.daily_tokens_per_guild),
                per_persona: limit(self.llm.daily_tokens_per_persona),
            },
        }
    }

    /// Where fetched models live.
    #[must_use]
    pub fn models_dir(&self) -> PathBuf {
        self.llm.models_dir.clone().unwrap_or_else(|| self.beside_store("models"))
    }

    /// `name` in the folder of the store (the working directory when the store has none).
    #[must_use]
    pub fn beside_store(&self, name: &str) -> PathBuf {
        self.store.path.parent().map_or_else(|| PathBuf::from(name), |d| d.join(name))
    }

    /// Where persona memory lives.
    #[must_use]
    pub fn memory_path(&self) -> PathBuf {
        self.personas.memory_path.clone().unwrap_or_else(|| self.beside_store("memory.db"))
    }
}

/// `[store]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (built in) or `aws` (with the `aws` feature).
    pub backend: String,
    /// The SQLite database file.
    pub path: PathBuf,
    /// `full`, `normal` or `off`; see [`den_storage::sqlite::Durability`].
    pub durability: den_storage::sqlite::Durability,
    /// How often expired items and messages are deleted, in seconds.
    pub sweep_interval_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "sqlite".into(),
            path: PathBuf::from("den-data/den.db"),
            durability: den_storage::sqlite::Durability::Normal,
            sweep_interval_secs: 300,
        }
    }
}

/// `[queue]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Name of the job queue; its DLQ is `<name>-dlq`.
    pub name: String,
    /// Deliveries before a job goes to the DLQ.
    pub max_receive_count: u32,
    /// How long an unprocessed job is kept, in hours.
    pub retention_hours: u64,
    /// How long a dead-lettered job is kept, in hours (longer than `retention_hours`).
    pub dlq_retention_hours: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { name: "den-jobs".into(), max_receive_count: 5, retention_hours: 96, dlq_retention_hours: 336 }
    }
}

impl QueueConfig {
    /// The DLQ's name.
    #[must_use]
    pub fn dlq_name(&self) -> String {
        format!("{}-dlq", self.name)
    }

    /// The queue declaration.
    #[must_use]
    pub fn spec(&self, worker: &WorkerSection) -> den_storage::QueueSpec {
        den_storage::QueueSpec {
            name: self.name.clone(),
            visibility_timeout: Duration::from_secs(worker.job_timeout_secs + 30),
            retention: Duration::from_secs(self.retention_hours * 3600),
            dead_letter: Some(den_storage::DeadLetterSpec {
                name: self.dlq_name(),
                max_receive_count: self.max_receive_count,
                retention: Duration::from_secs(self.dlq_retention_hours * 3600),
            }),
        }
    }
}

/// `[worker]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    /// Most jobs running at once.
    pub concurrency: usize,
    /// Longest a job may run, in seconds.
    pub job_timeout_secs: u64,
    /// Longest long poll, in seconds (at most 20).
    pub poll_wait_secs: u64,
    /// Ceiling of the first retry delay, in milliseconds.
    pub backoff_base_ms: u64,
    /// Largest retry delay, in seconds.
    pub backoff_max_secs: u64,
    /// On shutdown, how long running jobs may take to finish, in seconds.
    pub grace_secs: u64,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            concurrency: 16,
            job_timeout_secs: 120,
            poll_wait_secs: 20,
            backoff_base_ms: 2000,
            backoff_max_secs: 300,
            grace_secs: 20,
        }
    }
}

impl WorkerSection {
    /// The pool's settings.
    #[must_use]
    pub fn pool_config(&self) -> den_worker::WorkerConfig {
        den_worker::WorkerConfig {
            concurrency: self.concurrency,
            job_timeout: Duration::from_secs(self.job_timeout_secs),
            poll_wait: Duration::from_secs(self.poll_wait_secs),
            backoff: den_worker::Backoff {
                base: Duration::from_millis(self.backoff_base_ms),
                max: Duration::from_secs(self.backoff_max_secs),
            },
            grace: Duration::from_secs(self.grace_secs),
        }
    }
}

/// `[ops]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Address of the `/health`, `/ready` and `/metrics` server.
    pub listen: String,
    /// Heartbeat interval, in seconds.
    pub heartbeat_secs: u64,
    /// When set, metrics are also written to standard output as CloudWatch
    /// Embedded Metric Format lines in this namespace.
    pub emf_namespace: Option<String>,
    /// Seconds between EMF writes.
    pub emf_interval_secs: u64,
    /// Comma-separated name prefixes of the metrics sent as EMF (empty: all).
    pub emf_include: String,
}

impl OpsConfig {
    /// The EMF encoder `emf_namespace` and `emf_include` ask for; `None` when EMF is off.
    #[must_use]
    pub fn emf_encoder(&self) -> Option<den_ops::emf::EmfEncoder> {
        let namespace = self.emf_namespace.clone().filter(|n| !n.is_empty())?;
        let include = self.emf_include.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
        Some(den_ops::emf::EmfEncoder::new(namespace).include(include.collect()))
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            heartbeat_secs: 30,
            emf_namespace: None,
            emf_interval_secs: 60,
            emf_include: String::new(),
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A filter such as `info` or `den=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: "text".into(), level: "info".into() }
    }
}

/// `[discord]`: how to reach Discord; where the token comes from, never the token.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordConfig {
    /// Environment variable holding the bot token.
    pub token_env: String,
    /// A file holding the bot token (for Docker and Kubernetes secrets); wins over `token_env`.
    pub token_file: Option<PathBuf>,
    /// The application id; asked from Discord when unset.
    pub application_id: Option<u64>,
    /// The application's public key (hex), for the interactions endpoint; asked from Discord when unset.
    pub public_key: Option<String>,
    /// Gateway intents, by name.
    pub intents: Vec<String>,
    /// Total shards; 0 uses Discord's recommendation.
    pub shards: u32,
    /// The shards this process runs, as `first-last` (inclusive); all when unset.
    pub shard_ids: Option<String>,
    /// Register the modules' slash commands when `den run` starts.
    pub sync_commands: bool,
    /// With `sync_commands`: register in this guild only (changes show at once).
    pub sync_guild: Option<u64>,
    /// `host:port` of a plain-HTTP stand-in for Discord's REST API (a proxy, or a test double).
    pub api_proxy: Option<String>,
    /// A gateway URL to use instead of Discord's.
    pub gateway_url: Option<String>,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            token_env: "DISCORD_TOKEN".into(),
            token_file: None,
            application_id: None,
            public_key: None,
            intents: [
                "guilds",
                "guild_messages",
                "guild_message_reactions",
                "message_content",
                "direct_messages",
                "guild_voice_states",
            ]
            .map(str::to_owned)
            .to_vec(),
            shards: 0,
            shard_ids: None,
            sync_commands: false,
            sync_guild: None,
            api_proxy: None,
            gateway_url: None,
        }
    }
}

impl DiscordConfig {
    /// The intents as bits.
    pub fn intent_bits(&self) -> Result<u64, String> {
        den_discord::gateway::intents_from_names(&self.intents).map_err(|e| format!("discord.intents: {e}"))
    }

    /// The `[first, last)` shard range of this process, when limited.
    pub fn shard_range(&self) -> Result<Option<(u32, u32)>, String> {
        let Some(spec) = &self.shard_ids else { return Ok(None) };
        let parse = |s: &str| {
            s.trim().parse::<u32>().map_err(|_| format!("discord.shard_ids {spec:?}: expected N or FIRST-LAST"))
        };
        let (first, last) = match spec.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(spec)?, parse(spec)?),
        };
        if last < first {
            return Err(format!("discord.shard_ids {spec:?}: the last shard comes before the first"));
        }
        Ok(Some((first, last + 1)))
    }
}

/// `[interactions]`: the HTTP endpoint Discord POSTs interactions to.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InteractionsConfig {
    /// Serve it in `den run` too (always served by `den interactions`).
    pub enabled: bool,
    /// Address to listen on.
    pub listen: String,
    /// Path of the endpoint.
    pub path: String,
}

impl Default for InteractionsConfig {
    fn default() -> Self {
        Self { enabled: false, listen: "127.0.0.1:8081".into(), path: "/interactions".into() }
    }
}

/// `[llm]`: which models den talks to and how hard it tries.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Name of the provider to use first.
    pub primary: String,
    /// Name of the provider to use when the primary fails.
    pub fallback: Option<String>,
    /// Longest wait for the first token, in seconds.
    pub first_token_timeout_secs: u64,
    /// Longest a whole answer may take, in seconds.
    pub total_timeout_secs: u64,
    /// Attempts per provider.
    pub max_attempts: u32,
    /// Failures in a row that open a provider's circuit.
    pub breaker_threshold: u32,
    /// Seconds an open circuit waits before a trial call.
    pub breaker_cooldown_secs: u64,
    /// Tokens per guild per UTC day (0: unlimited).
    pub daily_tokens_per_guild: u64,
    /// Tokens per persona per guild per UTC day (0: unlimited).
    pub daily_tokens_per_persona: u64,
    /// Where `den model fetch` stores models (default: `models` beside the store).
    pub models_dir: Option<PathBuf>,
    /// The providers, by name.
    pub provider: Vec<ProviderSection>,
}

/// `[[llm.provider]]`: one model endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Name used by `primary`, `fallback` and `den llm ping --provider`.
    pub name: String,
    /// `anthropic`, `openai` (any OpenAI-compatible server: LiteLLM, Ollama,
    /// vLLM, llama.cpp, OpenRouter) or `bedrock` (AWS, with the `aws` feature).
    pub kind: String,
    /// Base URL (`https://api.anthropic.com`, `http://127.0.0.1:4000/v1`...);
    /// for `bedrock`, an optional endpoint override (a VPC endpoint).
    #[serde(default)]
    pub base_url: String,
    /// AWS region, for `bedrock` (required there; never assumed).
    #[serde(default)]
    pub region: Option<String>,
    /// Default model (not used by `local` and `canned`).
    #[serde(default)]
    pub model: String,
    /// Environment variable holding the API key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// File holding the API key (wins over `key_env`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// For `local`: the GGUF model (default: the one `den model fetch` stores in `llm.models_dir`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// For `local`: CPU threads (default 1; the largest of all local providers applies to the process).
    #[serde(default)]
    pub threads: Option<usize>,
    /// For `local`: positions (prompt and reply) kept in memory.
    #[serde(default)]
    pub context: Option<usize>,
}

impl ProviderSection {
    /// A provider that runs in den's process: no key, no server.
    #[must_use]
    pub fn is_in_process(&self) -> bool {
        matches!(self.kind.as_str(), "local" | "canned")
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            primary: "anthropic".into(),
            fallback: None,
            first_token_timeout_secs: 20,
            total_timeout_secs: 90,
            max_attempts: 3,
            breaker_threshold: 5,
            breaker_cooldown_secs: 30,
            daily_tokens_per_guild: 0,
            daily_tokens_per_persona: 0,
            models_dir: None,
            provider: vec![
                ProviderSection {
                    name: "anthropic".into(),
                    kind: "anthropic".into(),
                    base_url: "https://api.anthropic.com".into(),
                    model: "claude-sonnet-4-5".into(),
                    key_env: Some("ANTHROPIC_API_KEY".into()),
                    key_file: None,
                    region: None,
                    headers: Default::default(),
                    path: None,
                    threads: None,
                    context: None,
                },
                ProviderSection {
                    name: "litellm".into(),
                    kind: "openai".into(),
                    base_url: "http://127.0.0.1:4000/v1".into(),
                    model: "default".into(),
                    key_env: Some("LITELLM_API_KEY".into()),
                    key_file: None,
                    region: None,
                    headers: Default::default(),
                    path: None,
                    threads: None,
                    context: None,
                },
            ],
        }
    }
}

impl LlmConfig {
    /// CPU threads for in-process models: the most any local provider asks for, at least 1.
    #[must_use]
    pub fn local_threads(&self) -> usize {
        self.provider.iter().filter(|p| p.kind == "local").filter_map(|p| p.threads).max().unwrap_or(1).max(1)
    }

    /// Whether the primary provider is a small in-process model.
    #[must_use]
    pub fn primary_is_in_process(&self) -> bool {
        self.provider(&self.primary).is_ok_and(ProviderSection::is_in_process)
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Result<&ProviderSection, String> {
        self.provider.iter().find(|p| p.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.provider.iter().map(|p| p.name.as_str()).collect();
            format!("no LLM provider named {name:?} (configured: {})", known.join(", "))
        })
    }
}

/// Reads a provider's API key; `None` when it names no source.
pub fn provider_key(p: &ProviderSection, env: &[(String, String)]) -> Result<Option<Secret>, ConfigError> {
    if let Some(path) = &p.key_file {
        return std::fs::read_to_string(path)
            .map(|k| Some(Secret::new(k)))
            .map_err(|e| ConfigError(format!("cannot read the API key of {} from {}: {e}", p.name, path.display())));
    }
    let Some(var) = &p.key_env else { return Ok(None) };
    match env.iter().find(|(k, _)| k == var).map(|(_, v)| Secret::new(v.as_str())).filter(|s| !s.is_empty()) {
        Some(key) => Ok(Some(key)),
        None if p.kind == "anthropic" => Err(ConfigError(format!("no API key for {}: set {var}", p.name))),
        None => Ok(None),
    }
}

/// A configuration that could not be loaded; the message says where and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Where the config came from, for `den config check`.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// Override variables applied.
    pub overrides: Vec<String>,
}

/// Loads the configuration from `explicit` (the `--config` flag), else
/// `DEN_CONFIG`, else `./den.toml` when it exists, else defaults; then applies
/// `DEN_*` overrides from `env`.
pub fn load(explicit: Option<&Path>, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let from_env = env.iter().find(|(k, _)| k == CONFIG_ENV).map(|(_, v)| PathBuf::from(v));
    let (file, required) = match (explicit, from_env) {
        (Some(p), _) => (Some(p.to_path_buf()), true),
        (None, Some(p)) => (Some(p), true),
        (None, None) => (Some(PathBuf::from(DEFAULT_FILE)), false),
    };
    let (text, file) = match file {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => (text, Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => (String::new(), None),
            Err(e) => return Err(ConfigError(format!("cannot read config file {}: {e}", path.display()))),
        },
        None => (String::new(), None),
    };
    let shown = file.as_ref().map_or_else(|| DEFAULT_FILE.to_owned(), |p| p.display().to_string());
    let parsed: toml::Table = toml::from_str(&text).map_err(|e| located(&shown, &text, &e))?;
    // Deserialize the file alone first so its errors point at its own lines.
    let mut config: Config = toml::from_str(&text).map_err(|e| located(&shown, &text, &e))?;

    let mut tree = toml::Value::Table(parsed);
    let mut overrides = Vec::new();
    let mut vars: Vec<&(String, String)> = env.iter().filter(|(k, _)| is_override(k)).collect();
    vars.sort();
    for (name, value) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
        if path.len() != 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError(format!(
                "environment variable {name}: expected DEN_<SECTION>__<KEY>, for example DEN_WORKER__CONCURRENCY"
            )));
        }
        // A value that reads as a number or boolean may still be meant as text
        // (DEN_DISCORD__SHARD_IDS=0): try the typed reading, then the string.
        set_path(&mut tree, &path, parse_env_value(value));
        config = match Config::deserialize(tree.clone()) {
            Ok(c) => c,
            Err(typed) => {
                set_path(&mut tree, &path, toml::Value::String(value.clone()));
                Config::deserialize(tree.clone())
                    .map_err(|_| ConfigError(format!("environment variable {name}: {}", typed.message().trim())))?
            }
        };
        overrides.push(name.clone());
    }
    validate(&config).map_err(|e| ConfigError(format!("{shown}: {e}")))?;
    Ok(Loaded { config, file, overrides })
}

fn is_override(name: &str) -> bool {
    name.starts_with(ENV_PREFIX) && name != CONFIG_ENV && name.contains("__")
}

/// An override's value as TOML: a number or boolean when it reads as one, else a string.
fn parse_env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(f) = raw.parse::<f64>()
        && raw.contains('.')
    {
        return toml::Value::Float(f);
    }
    toml::Value::String(raw.to_owned())
}

fn set_path(tree: &mut toml::Value, path: &[String], value: toml::Value) {
    let mut node = tree;
    for key in &path[..path.len() - 1] {
        let table = match node {
            toml::Value::Table(t) => t,
            other => {
                *other = toml::Value::Table(toml::Table::new());
                let toml::Value::Table(t) = other else { return };
                t
            }
        };
        node = table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    if let toml::Value::Table(t) = node {
        t.insert(path[path.len() - 1].clone(), value);
    }
}

/// Turns a TOML error into `file: line L, column C, field [section] key: message`.
fn located(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else { return ConfigError(format!("{file}: {message}")) };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let section = text
        .lines()
        .take(line)
        .filter_map(|l| l.trim().strip_prefix('[').and_then(|l| l.split(']').next()))
        .last()
        .map(str::trim);
    let key = line_text.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.starts_with('['));
    let field = match (section, key) {
        (Some(s), Some(k)) => format!(", field {s}.{k}"),
        (None, Some(k)) => format!(", field {k}"),
        (Some(s), None) => format!(", section [{s}]"),
        (None, None) => String::new(),
    };
    ConfigError(format!("{file}: line {line}, column {column}{field}: {message}"))
}

fn validate(c: &Config) -> Result<(), String> {
    if c.store.backend != "sqlite" && c.store.backend != "aws" {
        return Err(format!("store.backend must be sqlite or aws, not {:?}", c.store.backend));
    }
    let uses_aws = c.store.backend == "aws" || c.aws.secret.is_some();
    if uses_aws && c.aws.region.trim().is_empty() {
        return Err("aws.region is required when store.backend is aws or aws.secret is set".into());
    }
    if c.ops.emf_interval_secs == 0 {
        return Err("ops.emf_interval_secs must be at least 1".into());
    }
    if c.worker.concurrency == 0 {
        return Err("worker.concurrency must be at least 1".into());
    }
    if c.worker.poll_wait_secs > 20 {
        return Err("worker.poll_wait_secs must be at most 20 (the long-poll limit)".into());
    }
    if c.worker.job_timeout_secs == 0 {
        return Err("worker.job_timeout_secs must be at least 1".into());
    }
    if c.ops.heartbeat_secs == 0 {
        return Err("ops.heartbeat_secs must be at least 1".into());
    }
    c.ops
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| format!("ops.listen {:?} is not an address like 127.0.0.1:8080", c.ops.listen))?;
    if c.log.format != "text" && c.log.format != "json" {
        return Err(format!("log.format must be text or json, not {:?}", c.log.format));
    }
    c.queue.spec(&c.worker).validate().map_err(|e| format!("[queue]: {e}"))?;
    c.discord.intent_bits()?;
    c.discord.shard_range()?;
    c.interactions.listen.parse::<SocketAddr>().map_err(|_| {
        format!("interactions.listen {:?} is not an address like 127.0.0.1:8081", c.interactions.listen)
    })?;
    den_personas::safety::OutputFilter::new(&c.personas.deny_patterns, vec![])
        .map_err(|e| format!("personas.deny_patterns: {e}"))?;
    if !matches!(c.personas.prompt_style.as_str(), "auto" | "full" | "brief") {
        return Err(format!("personas.prompt_style must be auto, full or brief, not {:?}", c.personas.prompt_style));
    }
    if !c.interactions.path.starts_with('/') {
        return Err(format!("interactions.path {:?} must start with /", c.interactions.path));
    }
    for p in &c.llm.provider {
        let name = &p.name;
        match p.kind.as_str() {
            "anthropic" | "openai" if p.base_url.trim().is_empty() => {
                return Err(format!("llm.provider {name:?}: base_url is required for {}", p.kind));
            }
            "anthropic" | "openai" | "bedrock" if p.model.trim().is_empty() => {
                return Err(format!("llm.provider {name:?}: model is required for {}", p.kind));
            }
            "anthropic" | "openai" => {}
            "bedrock" => {
                if p.region.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    return Err(format!("llm.provider {name:?}: bedrock needs region (such as \"us-east-1\")"));
                }
                if p.key_env.is_some() || p.key_file.is_some() {
                    return Err(format!(
                        "llm.provider {name:?}: bedrock takes credentials from the AWS chain \
                         (AWS_PROFILE, AWS_ACCESS_KEY_ID, a task or instance role); remove key_env and key_file"
                    ));
                }
            }
            "local" if p.threads == Some(0) || p.context.is_some_and(|c| c < 64) => {
                return Err(format!("llm.provider {name:?}: threads must be at least 1 and context at least 64"));
            }
            "local" | "canned" => {}
            other => {
                return Err(format!(
                    "llm.provider {name:?}: kind must be anthropic, openai, bedrock, local or canned, not {other:?}"
                ));
            }
        }
    }
    c.llm.provider(&c.llm.primary).map_err(|e| format!("llm.primary: {e}"))?;
    if let Some(f) = &c.llm.fallback {
        c.llm.provider(f).map_err(|e| format!("llm.fallback: {e}"))?;
    }
    if let Some(key) = &c.discord.public_key {
        den_discord::interactions::parse_public_key(key).map_err(|e| format!("discord.public_key: {e}"))?;
    }
    Ok(())
}

/// Where the Discord token was looked for, for messages.
#[must_use]
pub fn token_source(c: &DiscordConfig) -> String {
    match &c.token_file {
        Some(path) => format!("the file {} (discord.token_file)", path.display()),
        None => format!("the environment variable {}", c.token_env),
    }
}

/// Reads the Discord bot token.
pub fn discord_token(c: &DiscordConfig, env: &[(String, String)]) -> Result<Secret, ConfigError> {
    let token = match &c.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map(Secret::new)
            .map_err(|e| ConfigError(format!("cannot read the Discord token from {}: {e}", path.display())))?,
        None => env.iter().find(|(k, _)| *k == c.token_env).map(|(_, v)| Secret::new(v.as_str())).unwrap_or_default(),
    };
    if token.is_empty() {
        return Err(ConfigError(format!(
            "no Discord bot token: set the environment variable {} (or discord.token_file in den.toml)",
            c.token_env
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("den.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn no_file_gives_defaults_with_data_under_den_data() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let err = load(Some(&missing), &[]).unwrap_err();
        assert!(err.to_string().contains("cannot read config file"), "an explicit file must exist: {err}");
        let loaded = load(None, &[]).unwrap();
        assert_eq!(loaded.config.store.path, PathBuf::from("den-data/den.db"));
        assert_eq!(loaded.config.ops.listen, "127.0.0.1:8080");
        assert_eq!(loaded.config.ops.heartbeat_secs, 30);
    }

    #[test]
    fn a_type_error_names_the_file_line_and_field() {
        let (_d, path) = write("[store]\npath = \"x.db\"\n\n[worker]\nconcurrency = \"lots\"\n");
        let err = load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("field worker.concurrency"), "{err}");
    }

    #[test]
    fn an_unknown_field_is_reported_with_its_line() {
        let (_d, path) = write("[ops]\nlisten = \"127.0.0.1:9\"\nlisen = 3\n");
        let err = load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("lisen"), "{err}");
    }

    #[test]
    fn broken_toml_syntax_is_reported_with_its_line() {
        let (_d, path) = write("[ops]\nlisten = \"127.0.0.1:9\n");
        let err = load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn env_overrides_win_over_the_file_and_name_themselves_when_wrong() {
        let (_d, path) = write("[worker]\nconcurrency = 4\n");
        let loaded =
            load(Some(&path), &env(&[("DEN_WORKER__CONCURRENCY", "9"), ("DEN_OPS__LISTEN", "127.0.0.1:9100")]))
                .unwrap();
        assert_eq!(loaded.config.worker.concurrency, 9);
        assert_eq!(loaded.config.ops.listen, "127.0.0.1:9100");
        assert_eq!(loaded.overrides.len(), 2);

        let err = load(Some(&path), &env(&[("DEN_WORKER__CONCURENCY", "9")])).unwrap_err().to_string();
        assert!(err.contains("DEN_WORKER__CONCURENCY"), "{err}");
        let err = load(Some(&path), &env(&[("DEN_WORKER__CONCURRENCY", "many")])).unwrap_err().to_string();
        assert!(err.contains("DEN_WORKER__CONCURRENCY"), "{err}");
        let loaded = load(Some(&path), &env(&[("DEN_DISCORD__SHARD_IDS", "0")])).unwrap();
        assert_eq!(loaded.config.discord.shard_ids.as_deref(), Some("0"), "digits stay text where text is expected");
    }

    #[test]
    fn den_config_names_the_file() {
        let (_d, path) = write("[worker]\nconcurrency = 3\n");
        let loaded = load(None, &env(&[("DEN_CONFIG", path.to_str().unwrap())])).unwrap();
        assert_eq!(loaded.config.worker.concurrency, 3);
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let (_d, path) = write("[queue]\nretention_hours = 200\ndlq_retention_hours = 100\n");
        let err = load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("[queue]") && err.contains("longer"), "{err}");
        let (_d, path) = write("[ops]\nlisten = \"everywhere\"\n");
        assert!(load(Some(&path), &[]).unwrap_err().to_string().contains("ops.listen"));
    }

    #[test]
    fn the_token_comes_from_env_or_file_and_its_absence_names_the_variable() {
        let c = DiscordConfig::default();
        let err = discord_token(&c, &[]).unwrap_err().to_string();
        assert!(err.contains("DISCORD_TOKEN"), "{err}");
        assert_eq!(discord_token(&c, &env(&[("DISCORD_TOKEN", "abc")])).unwrap().expose(), "abc");
        let (_d, path) = write("file-token\n");
        let c = DiscordConfig { token_file: Some(path), ..DiscordConfig::default() };
        assert_eq!(discord_token(&c, &env(&[("DISCORD_TOKEN", "abc")])).unwrap().expose(), "file-token");
    }
}
