//! The `flowd` binary: `flowd [--config PATH] [serve]` starts the server.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flowd::configuration::Settings;
use flowd::startup::Application;

/// flowd: durable multi-phase flows, driven by actors.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true, env = "FLOWD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (the default).
    Serve,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref()).context("loading configuration")?;
    flowd::telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let application = Application::build(settings)
            .await
            .context("starting flowd")?;
        // The one line on stdout: scripts and tests read the bound address from it.
        println!("flowd listening on http://{}", application.address());
        application.run_until_stopped().await.context("serving")
    })
}
