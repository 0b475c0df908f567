//! What people do: slash commands, buttons, reactions and words in a thread.
//! Ingress only checks permissions and queues a job; the jobs below answer.

use std::sync::Arc;

use den_core::Job;
use den_discord::attachments::Download;
use den_discord::events::{InboundInteraction, MANAGE_CHANNELS, MANAGE_GUILD};
use den_discord::router::{Fallback, finish_interaction_or};
use den_discord::{CommandSpec, IngressCx, InteractionRef, OptionKind, OptionSpec, Outgoing, Reaction};
use den_worker::JobError;
use serde_json::{Value, json};

use super::sessions::{Session, Status};
use super::workspaces::Merge;
use super::{AgentModule, kinds, retry, turns};
use crate::records::EventKind;
use crate::run::{End, RunState, now_ms};

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
    ("agent status", |m, a| Box::pin(status(m, a))),
    ("agent logs", |m, a| Box::pin(logs(m, a))),
    ("agent confidence", |m, a| Box::pin(confidence(m, a))),
    ("agent escalations", |m, a| Box::pin(escalations(m, a))),
    ("agent stop", |m, a| Box::pin(stop(m, a))),
    ("agent settings", |m, a| Box::pin(settings(m, a))),
    ("agent-channel enable", |m, a| Box::pin(enable(m, a, true))),
    ("agent-channel disable", |m, a| Box::pin(enable(m, a, false))),
    ("workspace list", |m, a| Box::pin(workspace_list(m, a))),
    ("workspace files", |m, a| Box::pin(workspace_files(m, a))),
    ("workspace download", |m, a| Box::pin(workspace_download(m, a))),
    ("workspace clean", |m, a| Box::pin(workspace_clean(m, a))),
    ("workspace seed", |m, a| Box::pin(workspace_seed(m, a))),
];

/// A command as its job carries it.
pub(super) struct Asked {
    iref: InteractionRef,
    guild: u64,
    channel: u64,
    user: u64,
    options: serde_json::Map<String, Value>,
    /// The file attached to the command, when there is one: its URL and name.
    attachment: Option<(String, String)>,
}

impl Asked {
    fn int(&self, key: &str) -> Option<u64> {
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
async fn open_session(m: &AgentModule, guild: u64, thread: u64, owner: u64) -> Result<(Session, u64), JobError> {
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
fn thread_name(task: &str) -> String {
    let line = task.lines().find(|l| !l.trim().is_empty()).unwrap_or("task").trim();
    let mut name: String = line.chars().take(90).collect();
    if line.chars().count() > 90 {
        name.push('…');
    }
    name
}

/// Text without mentions of den.
fn without_mentions(text: &str, bot: u64) -> String {
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

/// `agent.message`: a mention in an enabled channel starts a session; words
/// in a session's thread steer its run or start the next one.
pub(super) async fn message(m: &Arc<AgentModule>, job: &Job) -> Result<(), JobError> {
    let p = &m.parts;
    let d = &job.payload;
    let (guild, channel, message, user) = (
        d["guild"].as_u64().unwrap_or(0),
        d["channel"].as_u64().unwrap_or(0),
        d["message"].as_u64().unwrap_or(0),
        d["user"].as_u64().unwrap_or(0),
    );
    let text = without_mentions(d["content"].as_str().unwrap_or_default(), p.egress.bot_user_id());
    if let Some((session, _)) = p.sessions.get(channel).await.map_err(retry)? {
        return in_thread(m, session, message, user, &text).await;
    }
    if !d["mentioned"].as_bool().unwrap_or(false) || text.is_empty() {
        return Ok(());
    }
    if !(p.settings.channels.contains(&channel) || p.sessions.channel_enabled(guild, channel).await.map_err(retry)?) {
        return Ok(()); // Mentions of den elsewhere are other modules' business.
    }
    if let Some(why) = &p.settings.unavailable {
        let said = Outgoing::text(format!("The agent cannot work on this den: {why}."));
        return p.egress.post(channel, &said, &format!("unavailable:{message}")).await.map(|_| ()).map_err(retry);
    }
    let thread = p.egress.start_thread(channel, message, &thread_name(&text)).await.map_err(retry)?;
    let (session, _) = open_session(m, guild, thread, user).await?;
    if session.runs == 0 || session.status != Status::Running {
        turns::start(m, session, &text, user).await?;
    }
    Ok(())
}

/// Words in a session's thread: a control while a run works (any other text
/// is a clarification), else the next task of the session.
async fn in_thread(
    m: &Arc<AgentModule>,
    session: Session,
    message: u64,
    user: u64,
    text: &str,
) -> Result<(), JobError> {
    let p = &m.parts;
    if session.status != Status::Running {
        if !text.is_empty() {
            turns::start(m, session, text, user).await?;
        }
        return Ok(());
    }
    let lower = text.trim().to_lowercase();
    let (word, rest) = match lower.as_str() {
        "stop" | "retry" | "wrong" | "escalate" => (lower.as_str(), ""),
        _ => (
            "clarify",
            text.trim()
                .strip_prefix("clarify:")
                .or_else(|| text.trim().strip_prefix("Clarify:"))
                .unwrap_or(text)
                .trim(),
        ),
    };
    p.sessions.send_control(session.thread, word, rest, now_ms()).await.map_err(retry)?;
    // Seen: a reaction says den heard it without a message in the thread.
    if let Err(e) = p.egress.react(session.thread, message, "👀").await {
        tracing::debug!(error = %e, "agent: cannot react to a control");
    }
    Ok(())
}

/// What an emoji or button asks of a run.
fn control_word(action: &str) -> Option<&'static str> {
    Some(match action {
        "🛑" | "stop" => "stop",
        "🔄" | "retry" => "retry",
        "❌" | "wrong" => "wrong",
        "🚀" | "escalate" => "escalate",
        _ => return None,
    })
}

/// `agent.reaction`: on the progress message, a control; on the result, a verdict.
pub(super) async fn reaction(m: &Arc<AgentModule>, job: &Job) -> Result<(), JobError> {
    let d = &job.payload;
    let (thread, message, user) =
        (d["channel"].as_u64().unwrap_or(0), d["message"].as_u64().unwrap_or(0), d["user"].as_u64().unwrap_or(0));
    let roles: Vec<u64> = d["roles"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    let emoji = d["emoji"].as_str().unwrap_or_default();
    let Some((session, _)) = m.parts.sessions.get(thread).await.map_err(retry)? else { return Ok(()) };
    let verdict_emoji = matches!(emoji, "👍" | "👎");
    if verdict_emoji && session.result_message.is_none_or(|r| message > r) && job.attempt < 4 {
        // A message newer than the recorded result may be a result not yet recorded: look again shortly.
        return Err(JobError::retry("the run's result is not recorded yet"));
    }
    if session.result_message == Some(message) && verdict_emoji {
        let said = verdict(m, &session, user, &roles, 0, emoji == "👍").await?;
        m.parts
            .egress
            .post(thread, &Outgoing::text(said), &format!("verdict:{message}:{user}:{emoji}"))
            .await
            .map_err(retry)?;
        return Ok(());
    }
    if session.progress_message == Some(message)
        && session.status == Status::Running
        && let Some(word) = control_word(emoji)
    {
        m.parts.sessions.send_control(thread, word, "", now_ms()).await.map_err(retry)?;
    }
    Ok(())
}

/// `agent.button`: controls on the progress message, merge and reject on the result.
pub(super) async fn button(m: &Arc<AgentModule>, job: &Job) -> Result<(), JobError> {
    let d = &job.payload;
    let iref = InteractionRef::from_job(job).ok_or_else(|| JobError::permanent("no interaction"))?;
    let (action, thread) = d["action"].as_str().unwrap_or_default().split_once(':').unwrap_or_default();
    let thread: u64 = thread.parse().unwrap_or(0);
    let user = d["user"].as_u64().unwrap_or(0);
    let roles: Vec<u64> = d["roles"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    let Some((session, _)) = m.parts.sessions.get(thread).await.map_err(retry)? else { return Ok(()) };
    let said = match action {
        "merge" | "reject" => {
            let permissions = d["permissions"].as_u64().unwrap_or(0);
            verdict(m, &session, user, &roles, permissions, action == "merge").await?
        }
        _ => match control_word(action) {
            Some(_) if session.status != Status::Running => "Nothing is running in this thread.".to_owned(),
            Some(word) => {
                m.parts.sessions.send_control(thread, word, "", now_ms()).await.map_err(retry)?;
                format!("<@{user}> asked to {word}.")
            }
            None => return Ok(()),
        },
    };
    let key = format!("button:{}", iref.id);
    m.parts.egress.post(thread, &Outgoing::text(said), &key).await.map_err(retry).map(|_| ())
}

/// Merges or rejects the session's branch when `user` may decide; what to say.
async fn verdict(
    m: &AgentModule,
    s: &Session,
    user: u64,
    roles: &[u64],
    permissions: u64,
    merge: bool,
) -> Result<String, JobError> {
    let p = &m.parts;
    let server = p.sessions.settings(s.guild).await.map_err(retry)?;
    let approver = server.approver_role.or(p.settings.approver_role).is_some_and(|r| roles.contains(&r))
        || permissions & (den_discord::events::ADMINISTRATOR | MANAGE_GUILD) != 0;
    if user != s.owner && !approver {
        return Ok(format!("<@{user}>: only <@{}> or an approver may decide on this branch.", s.owner));
    }
    if s.status != Status::Idle || s.commit.is_none() {
        return Ok("There is no finished branch to decide on.".into());
    }
    let (thread, run) = (s.thread.to_string(), s.run.clone());
    let said = if merge {
        let message = format!("Merge {} (thread {})", s.branch, s.thread);
        match p.workspaces.merge(s.guild, s.thread, &s.branch, &message).await.map_err(retry)? {
            Merge::Merged(commit) => {
                let data = json!({"branch": s.branch, "into": s.base, "commit": commit});
                p.records.publish(&thread, &run, EventKind::BranchMerged, 0, data).await.map_err(retry)?;
                close(m, s).await?;
                format!("🔀 <@{user}> merged `{}` into `{}` (`{}`).", s.branch, s.base, &commit[..commit.len().min(10)])
            }
            Merge::Conflict(files) => {
                return Ok(format!(
                    "⚠️ `{}` does not merge cleanly into `{}` (conflicts in {}). The base is untouched; ask the agent \
                     to rebase, or merge by hand.",
                    s.branch,
                    s.base,
                    files.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
                ));
            }
            Merge::NothingToMerge => format!("`{}` has nothing `{}` lacks.", s.branch, s.base),
        }
    } else {
        p.workspaces.reject(s.guild, s.thread, &s.branch).await.map_err(retry)?;
        p.records
            .publish(&thread, &run, EventKind::BranchRejected, 0, json!({"branch": s.branch}))
            .await
            .map_err(retry)?;
        close(m, s).await?;
        format!("🗑️ <@{user}> rejected `{}`; the branch is gone.", s.branch)
    };
    Ok(said)
}

/// The branch is decided: the result's buttons go, the session is closed.
async fn close(m: &AgentModule, s: &Session) -> Result<(), JobError> {
    let p = &m.parts;
    p.sessions
        .update(s.thread, |x| {
            x.status = Status::Closed;
            x.commit = None;
        })
        .await
        .map_err(retry)?;
    if let Some(result) = s.result_message
        && let Err(e) = p.egress.remove_buttons(s.thread, result).await
    {
        tracing::warn!(error = %e, "agent: cannot take the buttons off the result");
    }
    Ok(())
}

/// A run ended: the progress message says so, and the result (or the
/// question, or why it stopped) is posted.
pub(super) async fn finished(
    m: &Arc<AgentModule>,
    s: &Session,
    run: &str,
    state: &RunState,
    end: &End,
    model: &str,
) -> Result<(), JobError> {
    let p = &m.parts;
    let (status, headline, outgoing, commit) = match end {
        End::Finished { summary, confidence, commit } => {
            let git = p.workspaces.thread(s.guild, s.thread).await.map_err(retry)?;
            let diff = match commit {
                Some(c) => git
                    .run(&["diff", "--no-ext-diff", "--no-textconv", "--no-color", &s.base, c])
                    .await
                    .map_err(retry)?,
                None => String::new(),
            };
            let message = turns::result_message(s, state, summary, *confidence, commit.as_deref(), &diff);
            (Status::Idle, "✅ Finished".to_owned(), message, commit.clone())
        }
        End::AskedUser { question } => (
            Status::Waiting,
            "❓ Waiting for an answer".to_owned(),
            Outgoing::text(format!("❓ {question}\n(Answer in this thread.)")),
            None,
        ),
        End::Stopped => (
            Status::Idle,
            "🛑 Stopped".into(),
            Outgoing::text(
                "🛑 Stopped. The changes so far are in the workspace, uncommitted; say what to do next.".to_owned(),
            ),
            None,
        ),
        End::OutOfTurns => (
            Status::Idle,
            "⏹️ Out of turns".into(),
            Outgoing::text(format!(
                "⏹️ execution_aborted: the run used its {} turns without finishing; nothing was committed.",
                state.turns
            )),
            None,
        ),
        End::Failed { reason } => (
            Status::Idle,
            "❌ Failed".into(),
            Outgoing::text(format!("❌ execution_aborted: {reason}. Nothing was committed; say what to do next.")),
            None,
        ),
        End::Aborted(limit) => (
            Status::Idle,
            format!("⏹️ Aborted at {limit}"),
            Outgoing::text(format!("⏹️ execution_aborted: {limit} was reached; nothing was committed.")),
            None,
        ),
    };
    // The session is idle before the result shows, so a message answering the result starts the next run.
    let updated = p
        .sessions
        .update(s.thread, |x| {
            if x.run == run {
                x.status = status;
                x.commit.clone_from(&commit);
            }
        })
        .await
        .map_err(retry)?
        .unwrap_or_else(|| s.clone());
    let result = p.egress.post(s.thread, &outgoing, &format!("result:{run}")).await.map_err(retry)?;
    p.sessions
        .update(s.thread, |x| {
            if x.run == run {
                x.result_message = Some(result);
            }
        })
        .await
        .map_err(retry)?;
    if commit.is_some() {
        for emoji in ["👍", "👎"] {
            if let Err(e) = p.egress.react(s.thread, result, emoji).await {
                tracing::debug!(error = %e, "agent: cannot add the verdict reactions");
            }
        }
    }
    turns::edit_progress(m, &updated, state, model, &headline, false).await;
    Ok(())
}

async fn current(m: &AgentModule, a: &Asked) -> Result<Option<Session>, JobError> {
    Ok(m.parts.sessions.get(a.channel).await.map_err(retry)?.map(|(s, _)| s))
}

const NOT_A_SESSION: &str = "This is not an agent thread. Use `/agent status` in a thread the agent opened.";

async fn status(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = current(m, a).await? else { return Ok(NOT_A_SESSION.into()) };
    let state = m.parts.sessions.state(s.thread, &s.run).await.map_err(retry)?;
    let (turn, max) = state.as_ref().map_or((0, 0), |st| (st.turns, st.max_turns.unwrap_or(0)));
    Ok(format!(
        "**{}** · run `{}` · turn {turn}/{} · model `{}` · confidence {}\nbranch `{}` from `{}` · workspace `{}`\n\
         last escalation: {}\nsandbox: {}",
        match s.status {
            Status::Running => "Running",
            Status::Waiting => "Waiting for an answer",
            Status::Idle => "Idle",
            Status::Closed => "Closed",
        },
        s.run,
        max,
        if s.model.is_empty() { "–" } else { &s.model },
        s.confidence.map_or_else(|| "–".to_owned(), |c| format!("{c}%")),
        s.branch,
        s.base,
        s.guild,
        s.last_escalation.as_deref().unwrap_or("none"),
        m.parts.sandbox.describe(),
    ))
}

async fn logs(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = current(m, a).await? else { return Ok(NOT_A_SESSION.into()) };
    let count = usize::try_from(a.int("logs.count").unwrap_or(10)).unwrap_or(10);
    let lines = m.parts.records.calls(&s.run, count).await.map_err(retry)?;
    if lines.is_empty() {
        return Ok("No tool calls yet.".into());
    }
    let shown: Vec<String> = lines
        .iter()
        .map(|l| {
            let ok = if l.get("ok").and_then(Value::as_bool).unwrap_or(false) { "✅" } else { "❌" };
            let input: String = l.get("input").map(Value::to_string).unwrap_or_default().chars().take(120).collect();
            format!("{ok} `{}` {input}", l.get("tool").and_then(Value::as_str).unwrap_or("?"))
        })
        .collect();
    Ok(shown.join("\n"))
}

async fn confidence(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = current(m, a).await? else { return Ok(NOT_A_SESSION.into()) };
    let state =
        m.parts.sessions.state(s.thread, &s.run).await.map_err(retry)?.map(|st| st.confidence).unwrap_or_default();
    let last: Vec<String> = state.iter().rev().take(10).rev().map(u8::to_string).collect();
    Ok(format!(
        "Confidence now: {}\nLast turns: {}",
        state.last().map_or_else(|| "–".to_owned(), |c| format!("{c}%")),
        if last.is_empty() { "–".to_owned() } else { last.join(" → ") }
    ))
}

async fn escalations(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = current(m, a).await? else { return Ok(NOT_A_SESSION.into()) };
    let state = m.parts.sessions.state(s.thread, &s.run).await.map_err(retry)?;
    let list: Vec<String> = state
        .iter()
        .flat_map(|st| st.escalations.iter())
        .map(|e| format!("after turn {}: `{}` → `{}` ({})", e.turn, e.from, e.to, e.reason))
        .collect();
    Ok(if list.is_empty() { "No escalations in this run.".into() } else { list.join("\n") })
}

async fn stop(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = current(m, a).await? else { return Ok(NOT_A_SESSION.into()) };
    if s.status != Status::Running {
        return Ok("Nothing is running in this thread.".into());
    }
    m.parts.sessions.send_control(s.thread, "stop", "", now_ms()).await.map_err(retry)?;
    Ok("Stopping: the model call or command under way is cancelled.".into())
}

async fn settings(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let p = &m.parts;
    let mut server = p.sessions.settings(a.guild).await.map_err(retry)?;
    let changed = ["settings.max_turns", "settings.daily_tokens", "settings.approver_role"]
        .iter()
        .any(|k| a.options.contains_key(*k));
    if changed {
        if let Some(t) = a.int("settings.max_turns") {
            server.max_turns = u32::try_from(t).ok();
        }
        if let Some(t) = a.int("settings.daily_tokens") {
            server.daily_tokens = Some(t);
        }
        if let Some(r) = a.options.get("settings.approver_role").and_then(|v| v.as_str()?.parse().ok()) {
            server.approver_role = Some(r);
        }
        p.sessions.set_settings(a.guild, &server).await.map_err(retry)?;
    }
    let t = p.settings.turns;
    let ladder: Vec<String> =
        p.ladder.iter().enumerate().map(|(i, l)| format!("tier {}: `{}`", i + 1, l.name())).collect();
    let aliases: Vec<String> = p.settings.aliases.iter().map(|(a, r)| format!("`@{a}` → tier {}", r + 1)).collect();
    let daily = server.daily_tokens.map_or(p.settings.daily_tokens, |t| (t > 0).then_some(t));
    let approver = server.approver_role.or(p.settings.approver_role);
    Ok(format!(
        "{}Models: {}\nAliases: {}\nTurns per run: {} small, {} medium, {} large{}\nDaily tokens for this server: {}\n\
         Approver role: {}",
        if changed { "Saved.\n" } else { "" },
        ladder.join(", "),
        if aliases.is_empty() { "none".to_owned() } else { aliases.join(", ") },
        t.small,
        t.medium,
        t.large,
        server.max_turns.map_or_else(String::new, |c| format!(", capped at {c} here")),
        daily.map_or_else(|| "no limit".to_owned(), |t| t.to_string()),
        approver.map_or_else(|| "none (the person who asked decides)".to_owned(), |r| format!("<@&{r}>")),
    ))
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

async fn workspace_list(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let sessions = m.parts.sessions.of_guild(a.guild).await.map_err(retry)?;
    if sessions.is_empty() {
        return Ok("No agent sessions on this server yet.".into());
    }
    let lines: Vec<String> = sessions
        .iter()
        .rev()
        .take(20)
        .map(|s| format!("<#{}> `{}` · {:?} · {} runs", s.thread, s.branch, s.status, s.runs))
        .collect();
    Ok(lines.join("\n"))
}

/// The session's clone and branch, or the server's base.
async fn repo(m: &AgentModule, a: &Asked) -> Result<(crate::git::Git, String), JobError> {
    let w = &m.parts.workspaces;
    match current(m, a).await? {
        Some(s) if w.thread_dir(a.guild, s.thread).exists() => {
            let git = w.thread(a.guild, s.thread).await.map_err(retry)?;
            let rev =
                if git.run(&["rev-parse", "--verify", "--quiet", &s.branch]).await.is_ok() { s.branch } else { s.base };
            Ok((git, rev))
        }
        _ => Ok((w.base(a.guild).await.map_err(retry)?, w.base_branch().to_owned())),
    }
}

async fn workspace_files(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let (git, rev) = repo(m, a).await?;
    let files = git.run(&["ls-tree", "-r", "--name-only", &rev]).await.map_err(retry)?;
    let all: Vec<&str> = files.lines().collect();
    let mut text = format!("`{rev}`: {} files\n", all.len());
    for f in &all {
        if text.len() + f.len() > 1900 {
            text.push('…');
            break;
        }
        text.push_str(&format!("`{f}`\n"));
    }
    Ok(text)
}

/// Largest archive den attaches (Discord's limit for bots without boosts is 10 MiB).
const MAX_ARCHIVE: usize = 8 * 1024 * 1024;

async fn workspace_download(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let (git, rev) = repo(m, a).await?;
    let zip = m.parts.workspaces.archive(&git, &rev).await.map_err(retry)?;
    if zip.len() > MAX_ARCHIVE {
        return Ok(format!(
            "`{rev}` zips to {} MiB, over the {} MiB den attaches.",
            zip.len() >> 20,
            MAX_ARCHIVE >> 20
        ));
    }
    let name = format!("{}.zip", rev.replace('/', "-"));
    let message = Outgoing::text(format!("`{rev}` as a zip, for <@{}>:", a.user)).file(name, zip);
    m.parts.egress.post(a.channel, &message, &format!("zip:{}", a.iref.id)).await.map_err(retry)?;
    Ok(format!("Posted `{rev}` as a zip."))
}

async fn workspace_clean(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = current(m, a).await? else { return Ok(NOT_A_SESSION.into()) };
    if s.status == Status::Running || s.lease.as_ref().is_some_and(|(_, until)| *until > now_ms()) {
        return Ok("A run holds this thread's workspace: stop it first.".into());
    }
    let removed = m.parts.workspaces.clean(a.guild, s.thread).map_err(retry)?;
    m.parts
        .sessions
        .update(s.thread, |x| {
            x.status = Status::Closed;
            x.commit = None;
        })
        .await
        .map_err(retry)?;
    Ok(if removed {
        "This thread's workspace is removed; the server's base is untouched."
    } else {
        "This thread has no workspace."
    }
    .into())
}

/// Largest archive den downloads to seed a workspace.
const MAX_SEED_ARCHIVE: u64 = 25 * 1024 * 1024;

async fn workspace_seed(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    use super::workspaces::Seed;
    let p = &m.parts;
    let path = a.options.get("seed.path").and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let seed = match (&a.attachment, path) {
        (Some((url, filename)), None) => match p.attachments.get(url, MAX_SEED_ARCHIVE).await {
            Ok(bytes) => Seed::Archive(filename.clone(), bytes),
            Err(Download::Retry(e)) => return Err(JobError::retry(e)),
            Err(Download::Refused(why)) => return Ok(format!("Cannot use {filename}: {why}.")),
        },
        (None, Some(path)) => match allowed_path(&p.settings.seed_roots, path) {
            Some(folder) => Seed::Path(folder),
            None => {
                return Ok(format!(
                    "`{path}` is not a folder under one the operator allows for seeding ([agent] seed_roots)."
                ));
            }
        },
        _ => return Ok("Give an `archive` or a `path`, one of the two.".into()),
    };
    match p.workspaces.seed(a.guild, seed).await {
        Ok(Some(commit)) => Ok(format!(
            "🌱 The workspace is seeded (`{}` on `{}`); threads take it up at their next run.",
            &commit[..commit.len().min(10)],
            p.workspaces.base_branch()
        )),
        Ok(None) => Ok("The workspace already holds exactly those files.".into()),
        Err(e @ (crate::ToolError::BadInput(_) | crate::ToolError::Refused(_))) => Ok(format!("Cannot seed: {e}")),
        Err(e) => Err(retry(e)),
    }
}

/// `path` when it is a folder inside one of `roots` (both resolved, so `..` and links cannot leave them).
fn allowed_path(roots: &[std::path::PathBuf], path: &str) -> Option<std::path::PathBuf> {
    let folder = std::fs::canonicalize(path).ok().filter(|f| f.is_dir())?;
    roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|r| folder.starts_with(&r)).then_some(folder)
}
