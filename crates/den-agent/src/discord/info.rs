//! The commands that tell about a session: `/agent status|logs|confidence|escalations|stop|settings`.

use std::sync::Arc;

use den_worker::JobError;
use serde_json::Value;

use super::commands::Asked;
use super::sessions::{Session, Status};
use super::{AgentModule, retry};
use crate::run::now_ms;

/// The session of the thread the command was used in.
pub(super) async fn current(m: &AgentModule, a: &Asked) -> Result<Option<Session>, JobError> {
    Ok(m.parts.sessions.get(a.channel).await.map_err(retry)?.map(|(s, _)| s))
}

/// The answer in a channel that is not a session.
pub(super) const NOT_A_SESSION: &str = "This is not an agent thread. Use `/agent status` in a thread the agent opened.";

pub(super) async fn status(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
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

pub(super) async fn logs(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
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

pub(super) async fn confidence(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
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

pub(super) async fn escalations(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = current(m, a).await? else { return Ok(NOT_A_SESSION.into()) };
    let state = m.parts.sessions.state(s.thread, &s.run).await.map_err(retry)?;
    let list: Vec<String> = state
        .iter()
        .flat_map(|st| st.escalations.iter())
        .map(|e| format!("after turn {}: `{}` → `{}` ({})", e.turn, e.from, e.to, e.reason))
        .collect();
    Ok(if list.is_empty() { "No escalations in this run.".into() } else { list.join("\n") })
}

pub(super) async fn stop(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = current(m, a).await? else { return Ok(NOT_A_SESSION.into()) };
    if s.status != Status::Running {
        return Ok("Nothing is running in this thread.".into());
    }
    m.parts.sessions.send_control(s.thread, "stop", "", now_ms()).await.map_err(retry)?;
    Ok("Stopping: the model call or command under way is cancelled.".into())
}

pub(super) async fn settings(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let p = &m.parts;
    let mut server = p.sessions.settings(a.guild).await.map_err(retry)?;
    let changed = ["settings.max_turns", "settings.daily_tokens", "settings.approver_role", "settings.tiers"]
        .iter()
        .any(|k| a.options.contains_key(*k));
    if let Some(tiers) = a.options.get("settings.tiers").and_then(Value::as_str) {
        let names: Vec<String> = tiers.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
        let known: Vec<&str> = p.models.iter().map(|m| m.name()).collect();
        if let Some(unknown) = names.iter().find(|n| *n != "default" && !known.contains(&n.as_str())) {
            return Ok(format!("There is no model `{unknown}` here; den has: {}.", known.join(", ")));
        }
        server.tiers = if names.iter().any(|n| n == "default") { vec![] } else { names };
    }
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
        m.ladder_for(&server).iter().enumerate().map(|(i, l)| format!("tier {}: `{}`", i + 1, l.name())).collect();
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
