//! The `den` binary: command line, configuration and the wiring of roles.

mod admin;
mod agent;
mod aws;
mod cli;
mod config;
mod lambda;
mod llm;
mod model;
mod music;
mod personas;
mod playground;
mod roles;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse_from(arguments());
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    let loaded = match config::load(cli.config.as_deref(), &env) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    set_model_threads(loaded.config.llm.local_threads(), &env);
    let format = cli.log_format.as_deref().unwrap_or(&loaded.config.log.format);
    let format = match format.parse::<den_ops::LogFormat>() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log-format: {e}");
            return ExitCode::from(2);
        }
    };
    den_ops::init_logging(format, cli.log_level.as_deref().unwrap_or(&loaded.config.log.level));

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Only what talks to Discord or a model needs the secrets; `den health`
    // runs every 30 s in a container and must not call Secrets Manager.
    let needs_secrets = matches!(
        cli.command,
        Command::Run
            | Command::Gateway
            | Command::Worker
            | Command::Interactions
            | Command::Commands { .. }
            | Command::Llm { .. }
            | Command::Chat { .. }
            | Command::Playground(_)
            | Command::Agent { .. }
    );
    if needs_secrets && let Err(e) = runtime.block_on(aws::merge_secret(&loaded.config, &mut env)) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Aws { command: cli::AwsCommand::Bootstrap } => aws::bootstrap(&loaded.config).await,
            Command::Health { path } => admin::health(&loaded.config, &path).await,
            Command::Run => roles::run(roles::Role::All, &loaded, &env).await,
            Command::Gateway => roles::run(roles::Role::Gateway, &loaded, &env).await,
            Command::Worker => roles::run(roles::Role::Worker, &loaded, &env).await,
            Command::Interactions => roles::run(roles::Role::Interactions, &loaded, &env).await,
            Command::Lambda { role } => lambda::run(role, &loaded.config, &env).await,
            Command::Queue { command } => admin::queue(command, &loaded.config).await,
            Command::Store { command } => admin::store(command, &loaded.config).await,
            Command::Config { command } => admin::config(command, &loaded, &env),
            Command::Commands { command } => admin::commands(command, &loaded.config, &env).await,
            Command::Llm { command } => llm::command(command, &loaded.config, &env).await,
            Command::Persona { command } => personas::command(command, &loaded.config),
            Command::Campaign { command } => admin::campaign(command, &loaded.config),
            Command::Agent { command } => agent::command(command, &loaded.config, &env).await,
            Command::Music { command } => music::command(command, &loaded.config).await,
            Command::Chat { persona } => personas::chat(persona, &loaded.config, &env).await,
            Command::Model { command } => model::command(command, &loaded.config).await,
            Command::Playground(args) => playground::run(args, &loaded, &env).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes, joined.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line; in a Lambda custom runtime, which starts `bootstrap`
/// with no arguments, `den lambda`.
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = std::env::args_os().collect();
    let in_lambda = std::env::var_os(den_lambda::runtime::RUNTIME_API_ENV).is_some_and(|v| !v.is_empty());
    if args.len() == 1 && in_lambda {
        args.push("lambda".into());
    }
    args
}

/// Local models run on candle, which sizes its thread pool from these
/// variables the first time it computes: they are set here, before any
/// thread exists, unless the environment already sets them.
#[allow(unsafe_code)]
fn set_model_threads(threads: usize, env: &[(String, String)]) {
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if !env.iter().any(|(k, _)| k == var) {
            // SAFETY: main has started no thread yet (no runtime, no logger
            // worker), so nothing reads the environment while it changes.
            unsafe { std::env::set_var(var, threads.to_string()) };
        }
    }
}
