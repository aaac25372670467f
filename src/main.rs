//! Entry point: parse the CLI, start tracing, load config, dispatch.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use keygate::cli::{Cli, Command};
use keygate::config::LogFormat;
use keygate::{AppState, Clock, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: keygate::alloc::MiMalloc = keygate::alloc::MiMalloc;

fn main() -> ExitCode {
    // First, while no thread has touched SQLite yet.
    keygate::store::tune_sqlite();
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let result = keygate::config::workers(cli.config.workers).and_then(|workers| {
        let runtime = keygate::server::runtime(workers)?;
        runtime.block_on(run(cli, workers))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `keygate keys list | head -1`: the rest of the output was not wanted.
        Err(err) if err.is::<keygate::cli::output::ReaderLeft>() => ExitCode::from(141),
        Err(err) => {
            keygate::log_output::tell(&format!("error: {err:#}\n"));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, workers: usize) -> anyhow::Result<()> {
    start_tracing(LogFormat::parse(&cli.config.log_format)?);
    let config = Config::from_args(&cli.config)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, workers).await,
        // Opens no database: it only asks the server.
        Command::Healthcheck => keygate::cli::healthcheck::run(config.listen).await,
        command => keygate::cli::run(command, config).await,
    }
}

/// keygate's own log lines on stderr (never fatal: `log_output`), filtered by `RUST_LOG`, as
/// text or as one JSON object per line carrying the current span's fields (the request's
/// `key_id`).
fn start_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log line that cannot be written is dropped, never fatal (no eprintln fallback).
        .with_writer(|| keygate::log_output::Stderr)
        .log_internal_errors(false);
    match format {
        // Colours only on a terminal: not in journald, docker logs or a file.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

async fn serve(config: Config, workers: usize) -> anyhow::Result<()> {
    let listen = config.listen;
    // Idle and slow clients each hold a file: the default soft limit (often 1024) is far too low.
    match keygate::server::raise_file_limit() {
        Some(files) => tracing::info!(open_file_limit = files, "open-file limit"),
        None => tracing::warn!("cannot read the open-file limit"),
    }
    let state = AppState::build(config, Clock::System).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen}; set KEYGATE_LISTEN to a free address")
        })?;
    tracing::info!(%listen, upstream = %state.config.upstream_url, workers, "keygate is serving");
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    keygate::serve(state, listener, shutdown).await
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM; a second one exits at once (a shutdown can wait
/// on a store that cannot write, since rows are never dropped: the operator decides).
async fn stop_on_signal(shutdown: CancellationToken) {
    stop_signal().await;
    tracing::info!("shutting down: draining connections, then flushing the call log (a second signal exits at once)");
    shutdown.cancel();
    stop_signal().await;
    tracing::error!("second signal: exiting now; call-log rows not yet written are lost");
    std::process::exit(1);
}

/// The next Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
