//! The `flowd` binary: `flowd [--config PATH] [serve]` starts the server; `flows` and
//! `flow-types` are the CLI client of a running server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flowd::cli::{self, Connection, FlowTypesCommand, FlowsCommand};
use flowd::configuration::Settings;
use flowd::startup::Application;

/// mimalloc rather than the system allocator: the commit path and the actors allocate many
/// short-lived strings and vectors from several threads, where glibc's malloc spent ~15 % of a
/// throughput run. In turn: +11 % transitions/s on SQLite, +8 % on PostgreSQL, for +5 % resident
/// memory per parked flow (BENCHMARKS.md, session 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// flowd: durable multi-phase flows, driven by actors.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file of the server (default: ./config.toml when present).
    #[arg(long, global = true, env = "FLOWD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (the default).
    Serve,
    /// Create, list, show and watch flows on a running server.
    Flows {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// List flow types on a running server.
    FlowTypes {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: FlowTypesCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).map(|()| 0),
        Command::Flows {
            connection,
            command,
        } => client(cli::flows(connection, command)),
        Command::FlowTypes {
            connection,
            command,
        } => client(cli::flow_types(connection, command)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("flowd: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn client(work: impl std::future::Future<Output = anyhow::Result<i32>>) -> anyhow::Result<u8> {
    let code = actix_web::rt::System::new().block_on(work)?;
    Ok(u8::try_from(code).unwrap_or(2))
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref()).context("loading configuration")?;
    flowd::telemetry::init(&settings.log);
    actix_web::rt::System::new().block_on(async move {
        let application = Application::build(settings)
            .await
            .context("starting flowd")?;
        // The one line on stdout: scripts and tests read the bound address from it.
        println!("flowd listening on http://{}", application.address());
        application.run_until_stopped().await.context("serving")
    })
}
