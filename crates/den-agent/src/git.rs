//! den's own git, hardened against a repository a model (or an uploaded
//! archive) wrote: den rewrites the repository's config when it opens it,
//! empties its hooks, and runs git with no system or global config, hooks
//! pointed nowhere, no fsmonitor, no external diff or text conversion, no
//! pager and no prompts. Only den commits, merges and deletes branches.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::ToolError;

/// The config den keeps in every workspace repository; nothing in it runs a program.
const CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
                      [user]\n\tname = den\n\temail = den@localhost\n";

/// A workspace's repository, as den uses it.
#[derive(Clone, Debug)]
pub struct Git {
    dir: PathBuf,
}

impl Git {
    /// The repository at `dir`, created (on branch `main`) when there is none,
    /// its config replaced by den's and its hooks removed.
    pub async fn open(dir: &Path) -> Result<Self, ToolError> {
        let git = Self { dir: dir.to_owned() };
        if !dir.join(".git").is_dir() {
            git.run(&["init", "--quiet", "--initial-branch=main"]).await?;
        }
        let dot = dir.join(".git");
        std::fs::write(dot.join("config"), CONFIG).map_err(|e| ToolError::Failed(format!("git config: {e}")))?;
        for gone in ["hooks", "info/attributes"] {
            let path = dot.join(gone);
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(ToolError::Failed(format!("git {gone}: {e}")));
            }
        }
        Ok(git)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("git");
        c.current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            .args(["--no-pager", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"])
            .args(["-c", "core.untrackedCache=false", "-c", "safe.directory=*", "-c", "commit.gpgSign=false"])
            .args(args)
            .kill_on_drop(true);
        c
    }

    /// The repository's folder.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs git with `args`; its standard output, or an error with its message.
    pub async fn run(&self, args: &[&str]) -> Result<String, ToolError> {
        let out = self.command(args).output().await.map_err(|e| ToolError::Failed(format!("cannot run git: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(ToolError::Failed(format!("git {}: {}", args.first().unwrap_or(&""), err.trim())))
        }
    }

    /// Runs git with `args`; its standard output as bytes (an archive).
    pub async fn run_bytes(&self, args: &[&str]) -> Result<Vec<u8>, ToolError> {
        let out = self.command(args).output().await.map_err(|e| ToolError::Failed(format!("cannot run git: {e}")))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(ToolError::Failed(format!("git {}: {}", args.first().unwrap_or(&""), err.trim())))
        }
    }

    /// The files that would conflict if `theirs` were merged into `ours`
    /// (none: the merge is clean). Touches no branch and no file.
    pub async fn merge_conflicts(&self, ours: &str, theirs: &str) -> Result<Vec<String>, ToolError> {
        let args = ["merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs];
        let out = self.command(&args).output().await.map_err(|e| ToolError::Failed(format!("cannot run git: {e}")))?;
        match out.status.code() {
            Some(0) => Ok(vec![]),
            // The first line is the tree; the conflicted files follow.
            Some(1) => Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .skip(1)
                .take_while(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            _ => Err(ToolError::Failed(format!("git merge-tree: {}", String::from_utf8_lossy(&out.stderr).trim()))),
        }
    }

    /// `git status --short`.
    pub async fn status(&self) -> Result<String, ToolError> {
        self.run(&["status", "--short", "--branch"]).await
    }

    /// The diff of the working tree (against `base` when given), untracked files included.
    pub async fn diff(&self, base: Option<&str>) -> Result<String, ToolError> {
        self.run(&["add", "--all", "--intent-to-add"]).await?;
        let mut args = vec!["diff", "--no-ext-diff", "--no-textconv", "--no-color"];
        args.extend(base);
        self.run(&args).await
    }

    /// The last `count` commits, one line each.
    pub async fn log(&self, count: u32) -> Result<String, ToolError> {
        self.run(&["log", "--oneline", "--no-decorate", &format!("-{}", count.clamp(1, 100))]).await
    }

    /// The current branch.
    pub async fn branch(&self) -> Result<String, ToolError> {
        Ok(self.run(&["rev-parse", "--abbrev-ref", "HEAD"]).await?.trim().to_owned())
    }

    /// Switches to `branch`, creating it from `base` when missing.
    pub async fn checkout(&self, branch: &str, base: &str) -> Result<(), ToolError> {
        if self.run(&["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")]).await.is_ok() {
            self.run(&["checkout", "--quiet", branch]).await?;
        } else if self.run(&["rev-parse", "--verify", "--quiet", "HEAD"]).await.is_ok() {
            self.run(&["checkout", "--quiet", "-b", branch, base]).await?;
        } else {
            // An empty repository: the branch starts with the first commit.
            self.run(&["checkout", "--quiet", "--orphan", branch]).await?;
        }
        Ok(())
    }

    /// Commits every change with `message`; `None` when there was nothing to commit.
    pub async fn commit_all(&self, message: &str) -> Result<Option<String>, ToolError> {
        self.run(&["add", "--all"]).await?;
        // Nothing staged, also in a repository without a commit yet: nothing to commit.
        if self.run(&["diff", "--cached", "--quiet"]).await.is_ok() {
            return Ok(None);
        }
        self.run(&["commit", "--quiet", "--no-verify", "-m", message]).await?;
        Ok(Some(self.run(&["rev-parse", "HEAD"]).await?.trim().to_owned()))
    }

    /// `git diff --stat` between `base` and `head`.
    pub async fn diffstat(&self, base: &str, head: &str) -> Result<String, ToolError> {
        self.run(&["diff", "--stat", "--no-ext-diff", "--no-textconv", &format!("{base}...{head}")]).await
    }
}
