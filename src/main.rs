//! The `sigmahub` binary: a thin shell over the library.

mod allocator;
mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    allocator::small_pages();
    let cli = cli::Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "sigmahub: invalid --log filter {:?} ({e}); using `info`",
            cli.log
        );
        EnvFilter::new("info")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Span fields (the connection's id and peer) are flattened into each line's `span`.
        cli::LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }

    let print_config = cli.print_config;
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sigmahub: {e}");
            return ExitCode::from(2);
        }
    };
    if print_config {
        let mut shown = config.clone();
        shown.auth = config.auth.redacted();
        shown.cluster = config.cluster.redacted();
        shown.hooks = config.hooks.redacted();
        print!(
            "{}",
            toml::to_string(&shown).expect("the config serializes")
        );
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sigmahub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(allocator::collect_periodically());
    let result = runtime.block_on(async {
        let server = sigmahub::Server::bind(config).await?;
        server.run(shutdown_signal()).await
    });
    // `run` has kept its own deadline; nothing left (a DNS lookup of a NATS reconnection,
    // say) may keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigmahub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
