//! How a run ends in its thread: the progress message's last word and the
//! result (summary, diffstat, diff, merge buttons), or why it stopped.

use std::sync::Arc;

use den_discord::{Button, ButtonStyle, Outgoing};
use den_worker::JobError;

use super::sessions::{Session, Status};
use super::{AgentModule, retry, turns};
use crate::run::{End, RunState};

/// Longest diff shown in the message itself; longer ones are attached.
const INLINE_DIFF: usize = 1400;

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
            let message = result_message(s, state, summary, *confidence, commit.as_deref(), &diff);
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

/// The message that ends a finished run: summary, diffstat, diff (attached when long).
fn result_message(
    s: &Session,
    state: &RunState,
    summary: &str,
    confidence: u8,
    commit: Option<&str>,
    diff: &str,
) -> Outgoing {
    let tokens = state.usage.input_tokens + state.usage.output_tokens;
    let mut text = format!(
        "✅ **Done** in {} turns ({tokens} tokens), confidence {confidence}%\n> {}\n",
        state.turns,
        summary.lines().collect::<Vec<_>>().join("\n> ")
    );
    let Some(commit) = commit else {
        text.push_str("Nothing changed, so there is nothing to commit.");
        return Outgoing::text(text);
    };
    let short = &commit[..commit.len().min(10)];
    text.push_str(&format!("Committed `{short}` on `{}`:\n```\n{}```\n", s.branch, state.diffstat));
    let mut message = if diff.len() <= INLINE_DIFF && text.len() + diff.len() < 1900 {
        text.push_str(&format!("```diff\n{diff}```\n"));
        Outgoing::text(text)
    } else {
        Outgoing::text(text).file(format!("{}.diff", s.branch.replace('/', "-")), diff.as_bytes().to_vec())
    };
    text_footer(&mut message, &s.base);
    message.buttons(vec![
        Button::new(format!("agent:merge:{}", s.thread), format!("Merge into {}", s.base))
            .emoji("👍")
            .style(ButtonStyle::Success),
        Button::new(format!("agent:reject:{}", s.thread), "Reject").emoji("👎").style(ButtonStyle::Danger),
    ])
}

fn text_footer(message: &mut Outgoing, base: &str) {
    message.content.push_str(&format!("👍 merges into `{base}` if it merges cleanly; 👎 drops the branch."));
}
