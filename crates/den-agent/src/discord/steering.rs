//! Messages, reactions and buttons: a mention that starts a session, words
//! and emoji that steer a run, and the verdict (merge or reject) on its result.

use std::sync::Arc;

use den_core::Job;
use den_discord::events::MANAGE_GUILD;
use den_discord::{InteractionRef, Outgoing};
use den_worker::JobError;
use serde_json::{Value, json};

use super::commands::{self};
use super::sessions::{Session, Status};
use super::workspaces::Merge;
use super::{AgentModule, retry, turns};
use crate::records::EventKind;
use crate::run::now_ms;

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
    let text = commands::without_mentions(d["content"].as_str().unwrap_or_default(), p.egress.bot_user_id());
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
    let thread = p.egress.start_thread(channel, message, &commands::thread_name(&text)).await.map_err(retry)?;
    let (session, _) = commands::open_session(m, guild, thread, user).await?;
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
