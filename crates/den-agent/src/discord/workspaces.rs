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
    scope: Scope,
}

/// What a thread's branch merges into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The server's base: threads share their merged work (the default).
    #[default]
    Server,
    /// A base of the thread's own, started from the server's (seeded) base: threads never see each other's work.
    Thread,
}

/// What a server's workspace is seeded from.
#[derive(Clone, Debug)]
pub enum Seed {
    /// An uploaded archive (`.zip`, `.tar`, `.tar.gz`, `.tgz`): its name and bytes.
    Archive(String, Vec<u8>),
    /// A folder on den's machine, under one of the roots the operator allows.
    Path(PathBuf),
}

/// Most bytes an archive may unpack to.
const MAX_UNPACKED: u64 = 256 * 1024 * 1024;
/// Most files an archive may hold.
const MAX_FILES: usize = 20_000;

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
        Self { root: std::path::absolute(&root).unwrap_or(root), base: base.into(), scope: Scope::Server }
    }

    /// With threads merging into `scope`.
    #[must_use]
    pub fn scoped(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The folder of what `thread`'s branch merges into.
    fn home_dir(&self, guild: u64, thread: u64) -> PathBuf {
        match self.scope {
            Scope::Server => self.base_dir(guild),
            Scope::Thread => self.root.join(guild.to_string()).join("bases").join(thread.to_string()),
        }
    }

    /// What `thread`'s branch merges into: the server's base, or the thread's own (made from the server's).
    pub async fn home(&self, guild: u64, thread: u64) -> Result<Git, ToolError> {
        match self.scope {
            Scope::Server => self.base(guild).await,
            Scope::Thread => {
                let dir = self.home_dir(guild, thread);
                if !dir.join(".git").is_dir() {
                    clone_into(&self.base(guild).await?, &self.base, &dir).await?;
                }
                Git::open(&dir).await
            }
        }
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
            clone_into(&self.home(guild, thread).await?, &self.base, &dir).await?;
        }
        Git::open(&dir).await
    }

    /// Brings the thread's base branch up to what it merges into (after another thread merged).
    pub async fn refresh(&self, guild: u64, thread_id: u64, thread: &Git) -> Result<(), ToolError> {
        let base = self.home_dir(guild, thread_id).to_string_lossy().into_owned();
        let spec = format!("+refs/heads/{0}:refs/heads/{0}", self.base);
        // The thread is on its own branch while it works, so the base branch can be moved under it.
        if thread.branch().await? != self.base {
            thread.run(&["fetch", "--quiet", "--no-tags", &base, &spec]).await?;
        }
        Ok(())
    }

    /// Merges `branch` of `thread` into what it merges into when the merge is clean.
    pub async fn merge(&self, guild: u64, thread: u64, branch: &str, message: &str) -> Result<Merge, ToolError> {
        let base = self.home(guild, thread).await?;
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

    /// Replaces the files of `guild`'s base with `seed`'s, in one commit on
    /// the base branch; threads take it up at their next run. Returns the commit.
    pub async fn seed(&self, guild: u64, seed: Seed) -> Result<Option<String>, ToolError> {
        let base = self.base(guild).await?;
        let staging = self.root.join(guild.to_string()).join(format!("seed-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&staging).map_err(|e| ToolError::Failed(format!("seed: {e}")))?;
        let result = self.seed_from(&base, &staging, &seed).await;
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    async fn seed_from(&self, base: &Git, staging: &Path, seed: &Seed) -> Result<Option<String>, ToolError> {
        let (what, root) = match seed {
            Seed::Archive(name, bytes) => {
                unpack(name, bytes, staging).await?;
                // An archive of one folder (a repository's "Download ZIP") seeds with that folder's contents.
                let mut top: Vec<PathBuf> = read_dir(staging)?;
                let root = if top.len() == 1 && top[0].is_dir() { top.remove(0) } else { staging.to_owned() };
                (name.clone(), root)
            }
            Seed::Path(path) => (path.display().to_string(), path.clone()),
        };
        base.run(&["checkout", "--quiet", "--force", &self.base]).await?;
        base.run(&["rm", "-r", "-q", "--ignore-unmatch", "."]).await?;
        let dir = base_dir_of(base);
        copy_tree(&root, &dir, &mut 0)?;
        base.commit_all(&format!("Seed the workspace from {what}")).await
    }

    /// A zip of `rev` of the base repository or of a thread's clone.
    pub async fn archive(&self, git: &Git, rev: &str) -> Result<Vec<u8>, ToolError> {
        git.run_bytes(&["archive", "--format=zip", rev]).await
    }
}

/// Clones `branch` of `from` into `dir`: aside first, then moved into place,
/// so a clone cut short is never taken for a workspace.
async fn clone_into(from: &Git, branch: &str, dir: &Path) -> Result<(), ToolError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ToolError::Failed(format!("workspace: {e}")))?;
    }
    let partial = dir.with_extension(format!("partial-{:08x}", rand::random::<u32>()));
    let target = partial.to_string_lossy().into_owned();
    from.run(&["clone", "--quiet", "--no-hardlinks", "--branch", branch, ".", &target]).await?;
    std::fs::rename(&partial, dir).map_err(|e| ToolError::Failed(format!("workspace: {e}")))
}

fn base_dir_of(git: &Git) -> PathBuf {
    git.dir().to_owned()
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, ToolError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ToolError::Failed(format!("seed: {e}")))?;
    Ok(entries.filter_map(Result::ok).map(|e| e.path()).collect())
}

/// Copies the files and folders of `from` into `to`, leaving out `.git` and
/// symbolic links (a seed must not point den at files outside it).
fn copy_tree(from: &Path, to: &Path, files: &mut usize) -> Result<(), ToolError> {
    let fail = |e: std::io::Error| ToolError::Failed(format!("seed: {e}"));
    std::fs::create_dir_all(to).map_err(fail)?;
    for entry in std::fs::read_dir(from).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let kind = entry.file_type().map_err(fail)?;
        let name = entry.file_name();
        if name == ".git" || kind.is_symlink() {
            continue;
        }
        *files += 1;
        if *files > MAX_FILES {
            return Err(ToolError::Refused(format!("the seed has more than {MAX_FILES} files")));
        }
        let target = to.join(&name);
        if kind.is_dir() {
            copy_tree(&entry.path(), &target, files)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).map_err(fail)?;
        }
    }
    Ok(())
}

/// Unpacks an archive into `into`: zip by den, tar (compressed or not) by `tar`.
async fn unpack(name: &str, bytes: &[u8], into: &Path) -> Result<(), ToolError> {
    let lower = name.to_lowercase();
    if lower.ends_with(".zip") {
        return unzip(bytes, into);
    }
    if !(lower.ends_with(".tar") || lower.ends_with(".tar.gz") || lower.ends_with(".tgz")) {
        return Err(ToolError::BadInput(format!("{name}: den unpacks .zip, .tar, .tar.gz and .tgz archives")));
    }
    let file = into.with_extension("tar");
    std::fs::write(&file, bytes).map_err(|e| ToolError::Failed(format!("seed: {e}")))?;
    // GNU tar keeps members inside the folder (no absolute paths, no ..) and here owns nothing it unpacks.
    let out = tokio::process::Command::new("tar")
        .args(["-x", "--no-same-owner", "--no-same-permissions", "-f"])
        .arg(&file)
        .arg("-C")
        .arg(into)
        .output()
        .await;
    let _ = std::fs::remove_file(&file);
    let out = out.map_err(|e| ToolError::Failed(format!("cannot run tar: {e}")))?;
    if !out.status.success() {
        return Err(ToolError::BadInput(format!("{name}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

fn unzip(bytes: &[u8], into: &Path) -> Result<(), ToolError> {
    let bad = |e: zip::result::ZipError| ToolError::BadInput(format!("not a zip archive den can read: {e}"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(bad)?;
    if archive.len() > MAX_FILES {
        return Err(ToolError::Refused(format!("the archive has more than {MAX_FILES} files")));
    }
    let mut unpacked = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(bad)?;
        // Names that would leave the folder (absolute, `..`) are refused by the zip reader's own check.
        let Some(relative) = entry.enclosed_name() else {
            return Err(ToolError::Refused(format!(
                "{} would land outside the workspace",
                entry.name().unwrap_or_default()
            )));
        };
        let target = into.join(relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| ToolError::Failed(format!("seed: {e}")))?;
            continue;
        }
        if entry.is_symlink() {
            continue;
        }
        unpacked += entry.size();
        if unpacked > MAX_UNPACKED {
            return Err(ToolError::Refused(format!("the archive unpacks to more than {} MiB", MAX_UNPACKED >> 20)));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ToolError::Failed(format!("seed: {e}")))?;
        }
        let mut file = std::fs::File::create(&target).map_err(|e| ToolError::Failed(format!("seed: {e}")))?;
        // Counted as it is written, so a size the archive lies about is caught too.
        let mut limited = std::io::Read::take(&mut entry, MAX_UNPACKED + 1);
        std::io::copy(&mut limited, &mut file).map_err(|e| ToolError::BadInput(format!("seed: {e}")))?;
    }
    Ok(())
}
