//! Where model-written commands run: bubblewrap, or nowhere.
//!
//! A command runs as its session's own user (when den is root, `setpriv`
//! drops to it first; no capabilities, no new privileges), under rlimits
//! (`prlimit`: address space, processes, file size, CPU, open files, no core
//! files), in bubblewrap's new user, PID, IPC, UTS, cgroup and network
//! namespaces (loopback only), with system folders read-only, the workspace
//! writable but its `.git` read-only, a private `/tmp`, and an environment
//! holding nothing of den's. A wall-clock timeout kills the whole tree: the
//! sandbox's PID namespace dies with bubblewrap.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

use crate::ToolError;

/// Where the workspace appears inside the sandbox.
const MOUNT: &str = "/workspace";

/// Most bytes kept of a command's standard output or error.
const CAPTURE: usize = 1024 * 1024;

/// What a command may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Address space, bytes.
    pub address_space: u64,
    /// Processes of the session's user.
    pub processes: u64,
    /// Largest file written, bytes.
    pub file_size: u64,
    /// CPU seconds.
    pub cpu_secs: u64,
    /// Open files.
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            address_space: 1024 * 1024 * 1024,
            processes: 128,
            file_size: 256 * 1024 * 1024,
            cpu_secs: 120,
            open_files: 256,
        }
    }
}

/// How commands run here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// bubblewrap; `drop_to_session_user` when den is root.
    Bubblewrap {
        /// den is root and runs each session as its own user.
        drop_to_session_user: bool,
    },
    /// Commands do not run, and why.
    Disabled(String),
}

/// What a command did.
#[derive(Clone, Debug)]
pub struct Ran {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output (the first MiB).
    pub stdout: String,
    /// Standard error (the first MiB).
    pub stderr: String,
    /// Killed at the timeout.
    pub timed_out: bool,
    /// How long it took.
    pub took: Duration,
}

/// The sandbox den runs commands in.
#[derive(Clone, Debug)]
pub struct Sandbox {
    backend: Backend,
    limits: Limits,
}

/// Whether den runs as root (effective uid 0), from `/proc/self/status`.
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1));
    effective == Some("0")
}

impl Sandbox {
    /// Finds bubblewrap and runs a self-test; a sandbox that cannot run says why.
    pub async fn probe(limits: Limits) -> Self {
        let root = is_root();
        let mut needed = vec!["bwrap", "prlimit"];
        if root {
            needed.push("setpriv");
        }
        for tool in needed {
            if which(tool).is_none() {
                let why = format!("{tool} is not installed (Debian: apt install bubblewrap util-linux)");
                return Self { backend: Backend::Disabled(why), limits };
            }
        }
        let sandbox = Self { backend: Backend::Bubblewrap { drop_to_session_user: root }, limits };
        static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = std::env::temp_dir().join(format!("den-sandbox-self-test-{}-{n}", std::process::id()));
        let test = async {
            std::fs::create_dir_all(&scratch).map_err(|e| ToolError::Failed(e.to_string()))?;
            let ran = sandbox.run(&scratch, 60_999, "echo ok > proof && cat proof", Duration::from_secs(10)).await?;
            if ran.stdout.trim() == "ok" {
                Ok(())
            } else {
                Err(ToolError::Failed(format!("self-test printed {:?}, {}", ran.stdout, ran.stderr.trim())))
            }
        };
        let result = test.await;
        let _ = std::fs::remove_dir_all(&scratch);
        match result {
            Ok(()) => sandbox,
            Err(e) => Self { backend: Backend::Disabled(format!("bubblewrap's self-test failed: {e}")), limits },
        }
    }

    /// A sandbox that runs nothing, saying `why`.
    #[must_use]
    pub fn disabled(why: &str) -> Self {
        Self { backend: Backend::Disabled(why.to_owned()), limits: Limits::default() }
    }

    /// How commands run.
    #[must_use]
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// One line for logs and `/agent status`.
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Bubblewrap { drop_to_session_user: true } => {
                "bubblewrap, a user per session, no network, rlimits".into()
            }
            Backend::Bubblewrap { drop_to_session_user: false } => {
                "bubblewrap as den's user, no network, rlimits".into()
            }
            Backend::Disabled(why) => format!("commands disabled: {why}"),
        }
    }

    /// Runs `command` with `sh -c` in `workspace` as user `session_uid` (when
    /// den is root), killed with everything it started after `timeout`.
    pub async fn run(
        &self,
        workspace: &Path,
        session_uid: u32,
        command: &str,
        timeout: Duration,
    ) -> Result<Ran, ToolError> {
        let as_session_user = match &self.backend {
            Backend::Bubblewrap { drop_to_session_user } => *drop_to_session_user,
            Backend::Disabled(why) => return Err(ToolError::Refused(format!("commands cannot run here: {why}"))),
        };
        if as_session_user {
            own_tree(workspace, session_uid)?;
        }
        let mut cmd = self.command(workspace, as_session_user.then_some(session_uid), command);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| ToolError::Failed(format!("cannot start the sandbox: {e}")))?;
        let pid = child.id();
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let read = async {
            let (o, e) = tokio::join!(capped(out.as_mut()), capped(err.as_mut()));
            let status = child.wait().await;
            (o, e, status)
        };
        // Unfinished (a timeout, or the run stopped and this future dropped): the tree dies.
        let mut guard = KillTree(pid);
        let finished = tokio::time::timeout(timeout, read).await;
        if finished.is_ok() {
            guard.0 = None; // reaped: its PID may already be another process's
        }
        drop(guard);
        match finished {
            Ok((stdout, stderr, status)) => {
                let status = status.map_err(|e| ToolError::Failed(format!("the sandbox failed: {e}")))?;
                Ok(Ran { code: status.code(), stdout, stderr, timed_out: false, took: started.elapsed() })
            }
            Err(_) => Ok(Ran {
                code: None,
                stdout: String::new(),
                stderr: String::new(),
                timed_out: true,
                took: started.elapsed(),
            }),
        }
    }

    /// Kills every process of session user `uid`: what a worker that died
    /// mid-command left running, before its run goes on elsewhere. Only when
    /// commands run as per-session users (den is root); returns how many.
    #[must_use]
    pub fn kill_leftovers(&self, uid: u32) -> usize {
        if !matches!(self.backend, Backend::Bubblewrap { drop_to_session_user: true }) || uid == 0 {
            return 0;
        }
        let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
        let pids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(str::to_owned))
            .filter(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|u| u.split_whitespace().next())
                    == Some(uid.to_string().as_str())
            })
            .collect();
        if !pids.is_empty() {
            tracing::warn!(uid, processes = pids.len(), "killing what a stopped run left running");
            let _ = std::process::Command::new("kill").arg("-KILL").args(&pids).status();
        }
        pids.len()
    }

    fn command(&self, workspace: &Path, uid: Option<u32>, command: &str) -> Command {
        let l = self.limits;
        let mut args: Vec<String> = Vec::new();
        if let Some(uid) = uid {
            args.extend(["setpriv".into(), format!("--reuid={uid}"), format!("--regid={uid}")]);
            args.extend(["--clear-groups".into(), "--inh-caps=-all".into(), "--no-new-privs".into(), "--".into()]);
        }
        args.extend([
            "prlimit".into(),
            format!("--as={}", l.address_space),
            format!("--nproc={}", l.processes),
            format!("--fsize={}", l.file_size),
            format!("--cpu={}", l.cpu_secs),
            format!("--nofile={}", l.open_files),
            "--core=0".into(),
            "--".into(),
            "bwrap".into(),
        ]);
        for a in [
            "--die-with-parent",
            "--new-session",
            "--unshare-all",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--ro-bind",
            "/usr",
            "/usr",
            "--ro-bind",
            "/etc",
            "/etc",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
        ] {
            args.push(a.into());
        }
        for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let path = Path::new(top);
            match std::fs::read_link(path) {
                Ok(target) => args.extend(["--symlink".into(), target.display().to_string(), top.into()]),
                Err(_) if path.is_dir() => args.extend(["--ro-bind".into(), top.into(), top.into()]),
                Err(_) => {}
            }
        }
        let ws = workspace.display().to_string();
        args.extend(["--bind".into(), ws.clone(), MOUNT.into()]);
        if workspace.join(".git").exists() {
            args.extend(["--ro-bind".into(), format!("{ws}/.git"), format!("{MOUNT}/.git")]);
        }
        args.extend(["--chdir".into(), MOUNT.into(), "/bin/sh".into(), "-c".into(), command.into()]);
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]).env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
        cmd
    }
}

/// Kills a sandbox that is still running when dropped: its first process
/// (the PID namespace dies with it, and bubblewrap reaps it), then
/// bubblewrap. A finished sandbox has no such processes left; the kills miss.
struct KillTree(Option<u32>);

impl Drop for KillTree {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let mut targets: Vec<&str> = children.split_whitespace().collect();
        let own = pid.to_string();
        if std::fs::metadata(format!("/proc/{pid}")).is_ok() {
            targets.push(&own);
        }
        if !targets.is_empty() {
            let _ = std::process::Command::new("kill").arg("-KILL").args(&targets).status();
        }
    }
}

/// Reads at most [`CAPTURE`] bytes and drains the rest.
async fn capped<R: tokio::io::AsyncRead + Unpin>(reader: Option<&mut R>) -> String {
    let Some(reader) = reader else { return String::new() };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = CAPTURE.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Gives the workspace (but not its `.git`) to the session's user.
fn own_tree(dir: &Path, uid: u32) -> Result<(), ToolError> {
    let fail = |e: std::io::Error| ToolError::Failed(format!("cannot hand the workspace to its sandbox user: {e}"));
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid)).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        if path.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        if path.symlink_metadata().map_err(fail)?.is_dir() {
            own_tree(&path, uid)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid)).map_err(fail)?;
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(tool)).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}
