//! Slash commands: what ingress decides (permissions, a deferred answer, a
//! job) and the table of handlers the `agent.command` job dispatches to;
//! `/agent task` and `/agent-channel`.

use std::sync::Arc;

use den_core::Job;
use den_discord::events::{InboundInteraction, MANAGE_CHANNELS, MANAGE_GUILD};
use den_discord::router::{Fallback, finish_interaction_or};
use den_discord::{CommandSpec, IngressCx, InteractionRef, OptionKind, OptionSpec, Outgoing, Reaction};
use den_worker::JobError;
use serde_json::{Value, json};

use super::sessions::{Session, Status};
use super::{AgentModule, info, kinds, retry, turns, workspace_commands};

/// The commands the module declares.
pub(super) fn specs() -> Vec<CommandSpec> {
    let sub = |name: &str, what: &str| OptionSpec::new(name, what, OptionKind::SubCommand, false);
    let mut task = sub("task", "Give the agent a task: it opens a thread and works on it");
    task.options.push(OptionSpec::new("task", "What to do", OptionKind::String, true));
    let mut logs = sub("logs", "The last tool calls of this thread's run");
    logs.options.push(OptionSpec::integer("count", "How many (default 10)", false, 1, 50));
    let mut settings = sub("settings", "Show or change the agent's settings for this server");
    settings.options.push(OptionSpec::integer("max_turns", "Turns per run at most", false, 1, 100));
    settings.options.push(OptionSpec::integer(
        "daily_tokens",
        "Tokens per day for this server (0: no limit)",
        false,
        0,
        1_000_000_000,
    ));
    settings.options.push(OptionSpec::new(
        "tiers",
        "Models per tier, weakest first, by name (\"fast, strong\"; \"default\" for den's)",
        OptionKind::String,
        false,
    ));
    settings.options.push(OptionSpec::new(
        "approver_role",
        "A role whose members may merge any session",
        OptionKind::Role,
        false,
    ));
    let agent = CommandSpec::new("agent", "The coding agent")
        .option(task)
        .option(sub("status", "Whether a run is working here, its turn, model and confidence"))
        .option(logs)
        .option(sub("confidence", "Confidence now and over the last 10 turns"))
        .option(sub("escalations", "When and why the run moved to a stronger model"))
        .option(sub("stop", "Stop the run in this thread"))
        .option(settings);
    let channel = CommandSpec {
        default_member_permissions: Some(MANAGE_CHANNELS),
        ..CommandSpec::new("agent-channel", "Let the agent take tasks in this channel, or stop it")
            .option(sub("enable", "Mentioning den here starts a task in a thread"))
            .option(sub("disable", "den no longer takes tasks here"))
    };
    let mut seed = sub("seed", "Replace the server's workspace files with an archive or an allowed folder");
    seed.options.push(OptionSpec::new("archive", "A .zip, .tar, .tar.gz or .tgz", OptionKind::Attachment, false));
    seed.options.push(OptionSpec::new(
        "path",
        "A folder on den's machine the operator allows",
        OptionKind::String,
        false,
    ));
    let workspace = CommandSpec::new("workspace", "The agent's workspace on this server")
        .option(sub("list", "Sessions, their branches and where they stand"))
        .option(sub("files", "Files on this thread's branch (or the base)"))
        .option(sub("download", "A zip of this thread's branch (or the base)"))
        .option(sub("clean", "Remove this thread's clone of the workspace"))
        .option(seed);
    vec![agent, channel, workspace]
}

/// The subcommand of an interaction (the option key without a dot).
fn subcommand(i: &InboundInteraction) -> Option<&str> {
    i.options.keys().find(|k| !k.contains('.')).map(String::as_str)
}

/// Ingress: permissions, then a deferred answer and a job.
pub(super) fn on_command(m: &Arc<AgentModule>, i: &InboundInteraction, cx: &IngressCx) -> Option<Reaction> {
    let command = i.command.as_deref()?;
    if !matches!(command, "agent" | "agent-channel" | "workspace") {
        return None;
    }
    let sub = subcommand(i).unwrap_or_default().to_owned();
    let name = format!("{command} {sub}");
    if i.guild_id.is_none() {
        return Some(Reaction::reply("The agent works in servers only.", true));
    }
    let needs = match name.as_str() {
        "agent-channel enable" | "agent-channel disable" => Some((MANAGE_CHANNELS, "Manage Channels")),
        "agent settings" if i.options.len() > 1 => Some((MANAGE_GUILD, "Manage Server")),
        "workspace seed" => Some((MANAGE_GUILD, "Manage Server")),
        _ => None,
    };
    if let Some((bit, what)) = needs
        && !i.has_permission(bit)
    {
        return Some(Reaction::reply(format!("You need {what} for `/{name}`."), true));
    }
    let attachment = i.resolved_attachments.first().map(|a| json!({"url": a.url, "filename": a.filename}));
    let payload = json!({"name": name, "options": i.options, "user": i.user.as_ref().map(|u| u.id),
        "roles": i.roles, "permissions": i.permissions, "interaction": InteractionRef::of(i, cx.now),
        "attachment": attachment});
    let job = m.job(kinds::COMMAND, i.guild_id, payload);
    // A task is answered in public (the thread link); the rest only to the person asking.
    Some(Reaction::defer(job, name != "agent task"))
}

type CommandHandler =
    for<'a> fn(&'a Arc<AgentModule>, &'a Asked) -> futures_util::future::BoxFuture<'a, Result<String, JobError>>;

/// Each command and its handler; a handler answers with the text to show.
const COMMANDS: &[(&str, CommandHandler)] = &[
    ("agent task", |m, a| Box::pin(task(m, a))),
    ("agent status", |m, a| Box::pin(info::status(m, a))),
    ("agent logs", |m, a| Box::pin(info::logs(m, a))),
    ("agent confidence", |m, a| Box::pin(info::confidence(m, a))),
    ("agent escalations", |m, a| Box::pin(info::escalations(m, a))),
    ("agent stop", |m, a| Box::pin(info::stop(m, a))),
    ("agent settings", |m, a| Box::pin(info::settings(m, a))),
    ("agent-channel enable", |m, a| Box::pin(enable(m, a, true))),
    ("agent-channel disable", |m, a| Box::pin(enable(m, a, false))),
    ("workspace list", |m, a| Box::pin(workspace_commands::workspace_list(m, a))),
    ("workspace files", |m, a| Box::pin(workspace_commands::workspace_files(m, a))),
    ("workspace download", |m, a| Box::pin(workspace_commands::workspace_download(m, a))),
    ("workspace clean", |m, a| Box::pin(workspace_commands::workspace_clean(m, a))),
    ("workspace seed", |m, a| Box::pin(workspace_commands::workspace_seed(m, a))),
];

/// A command as its job carries it.
pub(super) struct Asked {
    pub(super) iref: InteractionRef,
    pub(super) guild: u64,
    pub(super) channel: u64,
    pub(super) user: u64,
    pub(super) options: serde_json::Map<String, Value>,
    /// The file attached to the command, when there is one: its URL and name.
    pub(super) attachment: Option<(String, String)>,
}

impl Asked {
    pub(super) fn int(&self, key: &str) -> Option<u64> {
        self.options.get(key).and_then(Value::as_u64)
    }
}

/// `agent.command`: runs the command and finishes the deferred answer.
pub(super) async fn command(m: &Arc<AgentModule>, job: &Job) -> Result<(), JobError> {
    let iref = InteractionRef::from_job(job).ok_or_else(|| JobError::permanent("no interaction"))?;
    let name = job.payload["name"].as_str().unwrap_or_default();
    let asked = Asked {
        guild: iref.guild_id.unwrap_or(0),
        channel: iref.channel_id.unwrap_or(0),
        user: iref.user_id.unwrap_or(0),
        options: job.payload["options"].as_object().cloned().unwrap_or_default(),
        attachment: job.payload["attachment"]["url"]
            .as_str()
            .map(|u| (u.to_owned(), job.payload["attachment"]["filename"].as_str().unwrap_or("archive").to_owned())),
        iref,
    };
    let Some((_, handler)) = COMMANDS.iter().find(|(n, _)| *n == name) else {
        return Err(JobError::permanent(format!("unknown agent command {name}")));
    };
    let text = handler(m, &asked).await?;
    if text.is_empty() {
        return Ok(()); // The handler answered on its own.
    }
    let fallback = if name == "agent task" { Fallback::Channel } else { Fallback::Drop };
    finish_interaction_or(&m.parts.egress, &*m.parts.clock, &asked.iref, &text, fallback).await.map_err(retry)
}

/// Opens (or finds) the session of `thread`.
pub(super) async fn open_session(
    m: &AgentModule,
    guild: u64,
    thread: u64,
    owner: u64,
) -> Result<(Session, u64), JobError> {
    let p = &m.parts;
    if let Some(found) = p.sessions.get(thread).await.map_err(retry)? {
        return Ok(found);
    }
    let session = Session {
        thread,
        guild,
        owner,
        branch: format!("den/{thread}"),
        base: p.workspaces.base_branch().to_owned(),
        uid: p.sessions.next_uid(p.settings.first_uid).await.map_err(retry)?,
        ..Session::default()
    };
    p.sessions.add_thread(guild, thread).await.map_err(retry)?;
    m.learn(thread);
    if !p.sessions.put(&session, 0).await.map_err(retry)? {
        // Another delivery made it first.
        return p.sessions.get(thread).await.map_err(retry)?.ok_or_else(|| JobError::retry("session vanished"));
    }
    Ok((session, 1))
}

/// A thread name from a task: its first line, cut short.
pub(super) fn thread_name(task: &str) -> String {
    let line = task.lines().find(|l| !l.trim().is_empty()).unwrap_or("task").trim();
    let mut name: String = line.chars().take(90).collect();
    if line.chars().count() > 90 {
        name.push('…');
    }
    name
}

/// Text without mentions of den.
pub(super) fn without_mentions(text: &str, bot: u64) -> String {
    text.replace(&format!("<@{bot}>"), "").replace(&format!("<@!{bot}>"), "").trim().to_owned()
}

async fn task(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let p = &m.parts;
    let task = a.options.get("task.task").and_then(Value::as_str).unwrap_or_default().trim().to_owned();
    if task.is_empty() {
        return Ok("Give the task in words: `/agent task task: fix the failing test`.".into());
    }
    if let Some(why) = &p.settings.unavailable {
        return Ok(format!("The agent cannot work on this den: {why}."));
    }
    // In a session's thread, the task continues the session.
    if let Some((session, _)) = p.sessions.get(a.channel).await.map_err(retry)? {
        if session.status == Status::Running {
            return Ok("A run is already working in this thread: stop it first, or add `clarify: ...`.".into());
        }
        turns::start(m, session, &task, a.user).await?;
        return Ok("On it.".into());
    }
    if !(p.settings.channels.contains(&a.channel)
        || p.sessions.channel_enabled(a.guild, a.channel).await.map_err(retry)?)
    {
        return Ok("The agent does not take tasks in this channel. Someone with Manage Channels can turn it on with \
                   `/agent-channel enable`."
            .into());
    }
    let key = format!("task:{}", a.iref.id);
    let starter = format!("🧵 Task from <@{}>:\n> {}", a.user, task.replace('\n', "\n> "));
    let message = p.egress.post(a.channel, &Outgoing::text(starter), &key).await.map_err(retry)?;
    let thread = p.egress.start_thread(a.channel, message, &thread_name(&task)).await.map_err(retry)?;
    let (session, _) = open_session(m, a.guild, thread, a.user).await?;
    turns::start(m, session, &task, a.user).await?;
    Ok(format!("Working on it in <#{thread}>."))
}

async fn enable(m: &Arc<AgentModule>, a: &Asked, on: bool) -> Result<String, JobError> {
    m.parts.sessions.set_channel(a.guild, a.channel, on).await.map_err(retry)?;
    if on {
        m.learn(a.channel);
        Ok("The agent takes tasks here now: mention den with a task, or use `/agent task`.".into())
    } else {
        Ok("The agent no longer takes tasks here (its threads go on).".into())
    }
}
