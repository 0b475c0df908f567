//! Where sessions work: each server has a base repository den owns
//! (`<root>/<guild>/base`), and each thread a clone of it
//! (`<root>/<guild>/threads/<thread>`) on its own branch. A thread's work
//! reaches the base only by a merge a person approved, and only when it is
//! clean: den checks with `git merge-tree` before touching the base.

use std::path::{Path, PathBuf};

use crate::ToolError;
use crate::git::Git;

/// The workspaces of every server, under one folder.
#[derive(Clone, Debug)]
pub struct Workspaces {
    root: PathBuf,
    base: String,
}

/// What a merge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Merged; the base's new commit.
    Merged(String),
    /// It would conflict in these files; the base was not touched.
    Conflict(Vec<String>),
    /// The branch has nothing the base lacks.
    NothingToMerge,
}

impl Workspaces {
    /// Workspaces under `root`, branching from `base`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>, base: &str) -> Self {
        let root = root.into();
        // Absolute, because git runs in each repository's own folder.
        Self { root: std::path::absolute(&root).unwrap_or(root), base: base.into() }
    }

    /// The branch sessions start from.
    #[must_use]
    pub fn base_branch(&self) -> &str {
        &self.base
    }

    fn base_dir(&self, guild: u64) -> PathBuf {
        self.root.join(guild.to_string()).join("base")
    }

    /// The folder of `thread`'s clone.
    #[must_use]
    pub fn thread_dir(&self, guild: u64, thread: u64) -> PathBuf {
        self.root.join(guild.to_string()).join("threads").join(thread.to_string())
    }

    /// The server's base repository, made (with a first commit on the base branch) when new.
    pub async fn base(&self, guild: u64) -> Result<Git, ToolError> {
        let dir = self.base_dir(guild);
        std::fs::create_dir_all(&dir).map_err(|e| ToolError::Failed(format!("workspace: {e}")))?;
        let git = Git::open(&dir).await?;
        if git.run(&["rev-parse", "--verify", "--quiet", &self.base]).await.is_err() {
            git.run(&["checkout", "--quiet", "-B", &self.base]).await?;
            let readme = dir.join("README.md");
            if !readme.exists() {
                std::fs::write(&readme, "# workspace\n\nden's agent works here; each thread on its own branch.\n")
                    .map_err(|e| ToolError::Failed(format!("workspace: {e}")))?;
            }
            git.commit_all("Start the workspace").await?;
        }
        Ok(git)
    }

    /// `thread`'s clone of the base, made when missing.
    pub async fn thread(&self, guild: u64, thread: u64) -> Result<Git, ToolError> {
        let dir = self.thread_dir(guild, thread);
        if !dir.join(".git").is_dir() {
            let base = self.base(guild).await?;
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ToolError::Failed(format!("workspace: {e}")))?;
            }
            // Cloned aside and moved into place, so a clone cut short is never taken for a workspace.
            let partial = dir.with_extension(format!("partial-{:08x}", rand::random::<u32>()));
            let target = partial.to_string_lossy().into_owned();
            base.run(&["clone", "--quiet", "--no-hardlinks", "--branch", &self.base, ".", &target]).await?;
            std::fs::rename(&partial, &dir).map_err(|e| ToolError::Failed(format!("workspace: {e}")))?;
        }
        Git::open(&dir).await
    }

    /// Brings the thread's base branch up to the server's base (after another thread merged).
    pub async fn refresh(&self, guild: u64, thread: &Git) -> Result<(), ToolError> {
        let base = self.base_dir(guild).to_string_lossy().into_owned();
        let spec = format!("+refs/heads/{0}:refs/heads/{0}", self.base);
        // The thread is on its own branch while it works, so the base branch can be moved under it.
        if thread.branch().await? != self.base {
            thread.run(&["fetch", "--quiet", "--no-tags", &base, &spec]).await?;
        }
        Ok(())
    }

    /// Merges `branch` of `thread` into the server's base when the merge is clean.
    pub async fn merge(&self, guild: u64, thread: u64, branch: &str, message: &str) -> Result<Merge, ToolError> {
        let base = self.base(guild).await?;
        let dir = self.thread_dir(guild, thread).to_string_lossy().into_owned();
        // Reopened first: its config is den's again, whatever happened to it.
        Git::open(Path::new(&dir)).await?;
        let incoming = format!("refs/den/incoming/{thread}");
        base.run(&["fetch", "--quiet", "--no-tags", &dir, &format!("+refs/heads/{branch}:{incoming}")]).await?;
        let ahead = base.run(&["rev-list", "--count", &format!("{}..{incoming}", self.base)]).await?;
        if ahead.trim() == "0" {
            return Ok(Merge::NothingToMerge);
        }
        // A dry run that writes only objects: the base's branch and files stay as they are.
        let conflicts = base.merge_conflicts(&self.base, &incoming).await?;
        if !conflicts.is_empty() {
            return Ok(Merge::Conflict(conflicts));
        }
        base.run(&["checkout", "--quiet", &self.base]).await?;
        base.run(&["merge", "--quiet", "--no-ff", "-m", message, &incoming]).await?;
        let head = base.run(&["rev-parse", "HEAD"]).await?;
        Ok(Merge::Merged(head.trim().to_owned()))
    }

    /// Drops `branch` of `thread`: its clone goes back to the base.
    pub async fn reject(&self, guild: u64, thread: u64, branch: &str) -> Result<(), ToolError> {
        let git = self.thread(guild, thread).await?;
        git.run(&["checkout", "--quiet", "--force", &self.base]).await?;
        git.run(&["clean", "--quiet", "-d", "--force"]).await?;
        git.run(&["branch", "--quiet", "-D", branch]).await.map(|_| ())
    }

    /// Removes `thread`'s clone.
    pub fn clean(&self, guild: u64, thread: u64) -> Result<bool, ToolError> {
        let dir = self.thread_dir(guild, thread);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ToolError::Failed(format!("cannot remove the workspace: {e}"))),
        }
    }

    /// A zip of `rev` of the base repository or of a thread's clone.
    pub async fn archive(&self, git: &Git, rev: &str) -> Result<Vec<u8>, ToolError> {
        git.run_bytes(&["archive", "--format=zip", rev]).await
    }
}
