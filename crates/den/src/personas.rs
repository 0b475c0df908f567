//! Building the personas module from configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use den_discord::{EgressConfig, Module};
use den_llm::ChatModel;
use den_llm::StreamEvent;
use den_llm::ledger::Ledger;
use den_llm::resilience::{Policy, Resilient};
use den_personas::card;
use den_personas::memory::{Line, NewFact, Subject};
use den_personas::module::{Deps, ReplyRequest};
use den_personas::{Models, Persona, PersonaSet, PersonasModule};
use futures_util::StreamExt as _;

use crate::cli::PersonaCommand;
use crate::config::Config;
use crate::llm::{LlmMetrics, provider};
use crate::roles::ModuleCx;

/// The resilience policy `[llm]` describes.
pub fn policy(c: &Config) -> Policy {
    Policy {
        first_token_timeout: Duration::from_secs(c.llm.first_token_timeout_secs.max(1)),
        total_timeout: Duration::from_secs(c.llm.total_timeout_secs.max(1)),
        max_attempts: c.llm.max_attempts.max(1),
        breaker_threshold: c.llm.breaker_threshold.max(1),
        breaker_cooldown: Duration::from_secs(c.llm.breaker_cooldown_secs),
        ..Policy::default()
    }
}

/// The configured models, each behind the resilience layer: the primary
/// (with the fallback) as the default, and every provider by name. A
/// provider that cannot be built (a missing key) is left out with a warning.
pub async fn models(
    c: &Config,
    env: &[(String, String)],
    metrics: &den_ops::Metrics,
    clock: &Arc<dyn den_core::Clock>,
) -> Option<Models> {
    let mut built: HashMap<String, Arc<dyn ChatModel>> = HashMap::new();
    for section in &c.llm.provider {
        match provider(section, env, &c.models_dir()).await {
            Ok(m) => {
                built.insert(section.name.clone(), m);
            }
            Err(e) => tracing::warn!(provider = %section.name, error = %e, "provider unavailable to personas"),
        }
    }
    let observer = Arc::new(LlmMetrics(metrics.clone()));
    let wrap = |primary: Arc<dyn ChatModel>, fallback: Option<Arc<dyn ChatModel>>| -> Arc<dyn ChatModel> {
        Arc::new(Resilient::new(primary, fallback, policy(c), clock.clone()).with_observer(observer.clone()))
    };
    let fallback = c.llm.fallback.as_ref().and_then(|f| built.get(f).cloned());
    let default = match built.get(&c.llm.primary) {
        Some(p) => wrap(p.clone(), fallback),
        None => wrap(fallback?, None),
    };
    let by_provider = built.iter().map(|(name, m)| (name.clone(), wrap(m.clone(), None))).collect();
    Some(Models { default, by_provider })
}

/// The personas module.
pub async fn module(cx: &ModuleCx<'_>) -> anyhow::Result<Arc<dyn Module>> {
    let c = cx.config;
    let personas = Arc::new(PersonaSet::open(&c.personas.dir));
    for e in personas.errors() {
        tracing::warn!(error = %e, "persona file skipped");
    }
    tracing::info!(dir = %c.personas.dir.display(), personas = personas.all().len(), "personas loaded");
    let memory = memory(c, Some(cx.store)).await?;
    if cx.background {
        reload_when_changed(personas.clone());
        expire_hourly(memory.clone(), cx.clock.clone());
    }
    let state = den_personas::state::State::new(cx.store.table(den_personas::state::table_spec()).await?);
    let ledger = Ledger::new(cx.store.table(den_llm::ledger::table_spec()).await?, cx.clock.clone());
    let models = models(c, cx.env, cx.metrics, cx.clock).await;
    if models.is_none() && !personas.all().is_empty() {
        tracing::warn!("personas have no language model: set the key of llm.primary (see `den llm ping`)");
    }
    let deps = Deps {
        egress: cx.egress.clone(),
        // Multi-bot mode: a persona with its own token posts as that bot.
        bot_egress: EgressConfig {
            token: None,
            api_proxy: c.discord.api_proxy.clone(),
            timeout: Duration::from_secs(15),
        },
        env: cx.env.to_vec(),
        posts: den_discord::posts::PostLedger::new(cx.store.table(den_discord::posts::table_spec()).await?),
        personas,
        memory,
        state,
        ledger,
        models,
        jobs: cx.jobs.clone(),
        clock: cx.clock.clone(),
        config: c.personas_config(),
    };
    let module = PersonasModule::new(deps).map_err(anyhow::Error::msg)?;
    Ok(module)
}

/// Reloads persona files when they change (checked every 2 s).
fn reload_when_changed(personas: Arc<PersonaSet>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let set = personas.clone();
            if let Ok(true) = tokio::task::spawn_blocking(move || set.reload_if_changed()).await {
                tracing::info!(personas = personas.all().len(), errors = personas.errors().len(), "personas reloaded");
            }
        }
    });
}

/// Deletes transcript lines older than 30 days, every hour.
fn expire_hourly(memory: den_personas::memory::MemoryStore, clock: Arc<dyn den_core::Clock>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match memory.expire(clock.now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(lines = n, "expired transcript lines deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot expire transcript lines"),
            }
        }
    });
}

/// `den persona ...`
pub fn command(command: PersonaCommand, c: &Config) -> anyhow::Result<()> {
    let dir = &c.personas.dir;
    let set = || PersonaSet::open(dir);
    let find = |name: &str| set().find(name).ok_or_else(|| anyhow::anyhow!("no persona {name:?} in {}", dir.display()));
    match command {
        PersonaCommand::List => {
            let set = set();
            println!("{:<20} {:<28} {:<12} {:>6}  provider", "id", "name", "nickname", "talk");
            for p in set.all() {
                println!(
                    "{:<20} {:<28} {:<12} {:>6.2}  {}",
                    p.id,
                    p.name,
                    p.nickname.as_deref().unwrap_or("-"),
                    p.talkativeness,
                    p.provider.as_deref().unwrap_or("(llm.primary)")
                );
            }
            for e in set.errors() {
                println!("broken: {e}");
            }
            if set.all().is_empty() && set.errors().is_empty() {
                println!("no personas in {} (try `den persona new my-persona`)", dir.display());
            }
            Ok(())
        }
        PersonaCommand::Show { name } => {
            let p = find(&name)?;
            println!("{}", toml::to_string(&*p)?);
            println!("--- the character den gives the model ---\n{}", den_personas::prompt::character(&p));
            Ok(())
        }
        PersonaCommand::Validate { files } => {
            let files = if files.is_empty() {
                let mut found: Vec<_> = std::fs::read_dir(dir)
                    .with_context(|| format!("cannot read {}", dir.display()))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                found.sort();
                found
            } else {
                files
            };
            let mut broken = 0;
            for f in &files {
                match Persona::load(f) {
                    Ok(p) => println!("ok     {} ({})", f.display(), p.id),
                    Err(e) => {
                        broken += 1;
                        println!("error  {e}");
                    }
                }
            }
            anyhow::ensure!(broken == 0, "{broken} of {} persona file(s) are broken", files.len());
            Ok(())
        }
        PersonaCommand::New { id, name } => {
            let name = name.unwrap_or_else(|| {
                id.split('-')
                    .map(|w| {
                        let mut c = w.chars();
                        c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            let text = den_personas::persona::template(&id, &name);
            let persona: Persona = toml::from_str(&text)?;
            persona.validate().map_err(anyhow::Error::msg)?;
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{id}.toml"));
            anyhow::ensure!(!path.exists(), "{} already exists", path.display());
            std::fs::write(&path, text)?;
            println!("wrote {}", path.display());
            Ok(())
        }
        PersonaCommand::Import { file, force, owner, token_env, provider, model } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut imported = card::import(&bytes).with_context(|| format!("{}", file.display()))?;
            if !imported.ignored.is_empty() {
                println!(
                    "ignored what the card set for {} (only the operator sets those: --owner, --token-env, --provider, --model)",
                    imported.ignored.join(", ")
                );
            }
            let p = &mut imported.persona;
            (p.owner, p.token_env, p.provider, p.model) = (owner, token_env, provider, model);
            p.validate().map_err(anyhow::Error::msg)?;
            let id = imported.persona.id.clone();
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{id}.toml"));
            anyhow::ensure!(force || !path.exists(), "{} exists (use --force to replace it)", path.display());
            std::fs::write(&path, toml::to_string(&imported.persona)?)?;
            // The card itself, so that export gives back every field den does not use.
            std::fs::write(dir.join(format!("{id}.card.json")), serde_json::to_vec_pretty(&imported.card)?)?;
            if let Some(png) = &imported.png {
                std::fs::write(dir.join(format!("{id}.card.png")), png)?;
            }
            println!("imported {} as {} ({:?} card)", imported.persona.name, path.display(), imported.version);
            Ok(())
        }
        PersonaCommand::Export { name, format, v3, output } => {
            let p = find(&name)?;
            let original: Option<serde_json::Value> = std::fs::read(dir.join(format!("{}.card.json", p.id)))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let version = if v3 { card::Version::V3 } else { card::Version::V2 };
            let card = card::export(&p, original.as_ref(), version);
            let (bytes, ext) = match format.as_str() {
                "json" => (serde_json::to_vec_pretty(&card)?, "json"),
                "png" => {
                    let image = std::fs::read(dir.join(format!("{}.card.png", p.id))).ok();
                    (card::export_png(&card, image.as_deref())?, "png")
                }
                other => anyhow::bail!("--format {other:?}: json or png"),
            };
            let path = output.unwrap_or_else(|| std::path::PathBuf::from(format!("{}.{ext}", p.id)));
            std::fs::write(&path, bytes)?;
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}

/// `den chat`: the personas in the terminal, with the configured model and
/// the same memory as in Discord (as guild 0, channel 0).
pub async fn chat(persona: Option<String>, c: &Config, env: &[(String, String)]) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

    let personas = PersonaSet::open(&c.personas.dir);
    let mut current =
        match &persona {
            Some(name) => personas.find(name).ok_or_else(|| anyhow::anyhow!("no persona {name:?}"))?,
            None => personas.all().into_iter().next().ok_or_else(|| {
                anyhow::anyhow!("no personas in {} (try `den persona new`)", c.personas.dir.display())
            })?,
        };
    let clock: Arc<dyn den_core::Clock> = Arc::new(den_core::SystemClock);
    let metrics = den_ops::Metrics::new();
    let models = models(c, env, &metrics, &clock)
        .await
        .ok_or_else(|| anyhow::anyhow!("no language model: check `den llm ping`"))?;
    let memory = memory(c, None).await?;
    let config = c.personas_config();
    let filter = den_personas::safety::OutputFilter::new(
        &config.deny_patterns,
        den_personas::prompt::RULES.iter().map(|r| (*r).to_owned()).collect(),
    )
    .map_err(anyhow::Error::msg)?;
    let you = env.iter().find(|(k, _)| k == "USER").map_or("you", |(_, v)| v.as_str()).to_owned();
    let (guild, channel, user) = (0, 0, 1);
    let mut out = tokio::io::stdout();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    out.write_all(format!("Talking to {} (/persona NAME, /remember TEXT, /forget, /quit)\n", current.name).as_bytes())
        .await?;
    // Message ids as Discord makes them (time in the top bits), so "said before it was forgotten" reads right.
    let mut next_id = den_discord::snowflake_at(clock.now());
    while let Some(line) = lines.next_line().await? {
        let text = den_personas::safety::clean_input(&line, den_personas::safety::MAX_INPUT_CHARS);
        let now = clock.now();
        let notice = if text.is_empty() {
            continue;
        } else if text == "/quit" {
            break;
        } else if let Some(name) = text.strip_prefix("/persona ") {
            match personas.find(name) {
                Some(p) => {
                    current = p;
                    format!("Talking to {}.", current.name)
                }
                None => format!("No persona {name:?}."),
            }
        } else if let Some(fact) = text.strip_prefix("/remember ") {
            memory.remember(guild, NewFact::new(Subject::User(user), fact, 0.8, "remember"), now).await?;
            format!("Noted: \"{fact}\".")
        } else if text == "/forget" {
            let n = memory.forget_user(guild, user, None, now).await?;
            format!("Forgotten ({n} items).")
        } else {
            next_id += 1;
            let line = Line {
                message_id: next_id,
                user_id: user,
                persona: None,
                author: you.clone(),
                text: text.clone(),
                at: now,
                about_user: 0,
            };
            memory.record(guild, channel, line).await?;
            if let Some(named) = personas.all().into_iter().find(|p| p.is_named_in(&text)) {
                current = named;
            }
            let req = ReplyRequest {
                guild,
                channel,
                persona: current.id.clone(),
                user_id: user,
                user_name: you.clone(),
                text,
                message_id: Some(next_id),
                replied_to: None,
                replied_text: None,
                roast: None,
                to_persona: false,
                chime_in: false,
            };
            let request = den_personas::module::compose(&memory, &config, &current, &req, &[], now).await?;
            out.write_all(format!("{}: ", current.name).as_bytes()).await?;
            let mut reply = String::new();
            match models.for_persona(&current).stream(&request).await {
                Ok(mut stream) => {
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(StreamEvent::Delta(d)) => {
                                reply.push_str(&d);
                                if filter.check(&reply).is_err() {
                                    reply = format!("*{} thinks better of it.*", current.name);
                                    out.write_all(b"[filtered] ").await?;
                                    out.write_all(reply.as_bytes()).await?;
                                    break;
                                }
                                out.write_all(d.as_bytes()).await?;
                                out.flush().await?;
                            }
                            Ok(StreamEvent::Done { .. }) => break,
                            Ok(StreamEvent::ToolCall(_)) => {} // personas offer no tools
                            Err(e) => {
                                out.write_all(format!("\n(the model failed: {e})").as_bytes()).await?;
                                break;
                            }
                        }
                    }
                }
                Err(e) => out.write_all(format!("(the model failed: {e})").as_bytes()).await?,
            }
            next_id += 1;
            let line = Line {
                message_id: next_id,
                user_id: 0,
                persona: Some(current.id.clone()),
                author: current.name.clone(),
                text: reply.trim().to_owned(),
                at: clock.now(),
                about_user: user,
            };
            memory.record(guild, channel, line).await?;
            String::new()
        };
        out.write_all(format!("{notice}\n").as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

/// Persona memory: the `memory.db` file beside an SQLite store; on the AWS
/// store a den table, so that every worker shares it.
async fn memory(
    c: &Config,
    store: Option<&Arc<dyn den_storage::Store>>,
) -> anyhow::Result<den_personas::memory::MemoryStore> {
    use den_personas::memory::{MemoryStore, table_spec};
    if c.store.backend == "sqlite" {
        return Ok(MemoryStore::open(&c.memory_path())?);
    }
    let opened;
    let store = match store {
        Some(store) => store,
        None => {
            opened = crate::roles::open_store(c).await?;
            &opened
        }
    };
    let table = store.table(table_spec()).await.context("cannot open the persona memory table")?;
    Ok(MemoryStore::on_table(table))
}
