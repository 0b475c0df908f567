//! `/workspace list|files|download|clean|seed`.

use std::sync::Arc;

use den_discord::Outgoing;
use den_discord::attachments::Download;
use den_worker::JobError;
use serde_json::Value;

use super::commands::Asked;
use super::sessions::Status;
use super::{AgentModule, info, retry};
use crate::run::now_ms;

pub(super) async fn workspace_list(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
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
    match info::current(m, a).await? {
        Some(s) if w.thread_dir(a.guild, s.thread).exists() => {
            let git = w.thread(a.guild, s.thread).await.map_err(retry)?;
            let rev =
                if git.run(&["rev-parse", "--verify", "--quiet", &s.branch]).await.is_ok() { s.branch } else { s.base };
            Ok((git, rev))
        }
        _ => Ok((w.base(a.guild).await.map_err(retry)?, w.base_branch().to_owned())),
    }
}

pub(super) async fn workspace_files(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
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

pub(super) async fn workspace_download(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
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

pub(super) async fn workspace_clean(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
    let Some(s) = info::current(m, a).await? else { return Ok(info::NOT_A_SESSION.into()) };
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

pub(super) async fn workspace_seed(m: &Arc<AgentModule>, a: &Asked) -> Result<String, JobError> {
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
