//! The `flowd` binary: `flowd [serve] [--config PATH]` starts the server; `flows` and
//! `flow-types` are the CLI client of a running server; `openapi` and `completions` print the
//! API document and shell completion scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use flowd::cli::{self, CliError, Connection, FlowTypesCommand, FlowsCommand, Output};
use flowd::configuration::{ConfigOrigin, Settings};
use flowd::startup::Application;

/// mimalloc rather than the system allocator: the commit path and the actors allocate many
/// short-lived strings and vectors from several threads, where glibc's malloc spent ~15 % of a
/// throughput run. In turn: +11 % transitions/s on SQLite, +8 % on PostgreSQL, for +5 % resident
/// memory per parked flow (docs/BENCHMARKS-HISTORY.md, session 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// flowd: durable multi-phase flows, driven by actors.
///
/// Without a subcommand it starts the server, like `flowd serve`.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options of the server.
#[derive(Clone, Debug, Default, clap::Args)]
struct ServeArgs {
    /// Configuration file (default: config.toml in the working directory).
    #[arg(long, env = "FLOWD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (the default).
    Serve(ServeArgs),
    /// Create, list, show, watch and steer flows on a running server.
    Flows {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// List, show and register flow types on a running server.
    FlowTypes {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: FlowTypesCommand,
    },
    /// Print the OpenAPI document of the API (the same as `GET /openapi.json`).
    Openapi,
    /// Print a shell completion script, e.g. `flowd completions bash > /etc/bash_completion.d/flowd`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What to run, from the parsed command line: `--config` may come before `serve` or after it
/// (after wins; either wins over `FLOWD_CONFIG`); given on the command line before a client
/// subcommand (`flows`, `flow-types`, …), which talks to a running server and reads no
/// configuration file, it is a usage error rather than silently ignored.
fn command_from(matches: &clap::ArgMatches) -> Result<Command, clap::Error> {
    use clap::parser::ValueSource::CommandLine;
    let config_given = matches.value_source("config") == Some(CommandLine);
    let config_given_to_serve = matches
        .subcommand_matches("serve")
        .is_some_and(|serve| serve.value_source("config") == Some(CommandLine));
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(matches)?;
    match cli.command {
        None => Ok(Command::Serve(cli.serve)),
        Some(Command::Serve(args)) => Ok(Command::Serve(ServeArgs {
            config: if config_given_to_serve || !config_given {
                args.config.or(cli.serve.config)
            } else {
                cli.serve.config
            },
        })),
        Some(_) if config_given => Err(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "--config configures the server (`flowd serve --config PATH`); the client \
             subcommands talk to a running server (--server URL)",
        )),
        Some(other) => Ok(other),
    }
}

fn main() -> ExitCode {
    let command = command_from(&Cli::command().get_matches()).unwrap_or_else(|error| error.exit());
    match command {
        Command::Serve(args) => match serve(args.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("flowd: {}", once_each(&error));
                ExitCode::from(1)
            }
        },
        Command::Flows {
            connection,
            command,
        } => client(cli::flows(connection, command)),
        Command::FlowTypes {
            connection,
            command,
        } => client(cli::flow_types(connection, command)),
        Command::Openapi => {
            use utoipa::OpenApi;
            let document = flowd::http::openapi::ApiDoc::openapi();
            let text = document.to_pretty_json().unwrap_or_default();
            exit_with(Output::line(&text).map(|()| 0))
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flowd", &mut script);
            exit_with(Output::write(&String::from_utf8_lossy(&script)).map(|()| 0))
        }
    }
}

fn client(work: impl std::future::Future<Output = Result<u8, CliError>>) -> ExitCode {
    exit_with(actix_web::rt::System::new().block_on(work))
}

fn exit_with(result: Result<u8, CliError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flowd: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// The error and its causes, each told once: a cause whose text its parent already quotes is
/// left out.
fn once_each(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let (settings, origin) = Settings::load_with_origin(config.as_deref())?;
    // Held to the end: dropping it sends the spans still buffered for export.
    let _telemetry = flowd::telemetry::init(&settings.log)?;
    match &origin {
        ConfigOrigin::File(path) => tracing::info!(config = %path.display(), "configuration read"),
        ConfigOrigin::Defaults { looked_for } => tracing::warn!(
            looked_for = %looked_for.display(),
            "no configuration file: starting with the defaults and no flow types; \
             pass --config PATH (or FLOWD_CONFIG) or start flowd in the folder of config.toml"
        ),
    }
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    actix_web::rt::System::new().block_on(async move {
        let application = match Application::build(settings).await {
            Ok(application) => application,
            Err(error) => {
                // Actors started before the failure get their first turn before the system is
                // dropped; an actor dropped unstarted would panic outside the runtime.
                actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
                return Err(error.into());
            }
        };
        // The one line on stdout: scripts and tests read the bound address from it.
        println!("flowd listening on http://{}", application.address());
        application.run_until_stopped().await.context("serving")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Command, clap::Error> {
        command_from(&Cli::command().try_get_matches_from(args)?)
    }

    fn served_config(args: &[&str]) -> Option<PathBuf> {
        match parsed(args) {
            Ok(Command::Serve(args)) => args.config,
            Ok(_) => panic!("{args:?} is not the server"),
            Err(error) => panic!("{args:?} refused: {error}"),
        }
    }

    #[test]
    fn config_may_come_before_or_after_serve() {
        let config = Some(PathBuf::from("x.toml"));
        assert_eq!(served_config(&["flowd", "--config", "x.toml"]), config);
        assert_eq!(
            served_config(&["flowd", "serve", "--config", "x.toml"]),
            config
        );
        assert_eq!(
            served_config(&["flowd", "--config", "x.toml", "serve"]),
            config
        );
        assert_eq!(
            served_config(&["flowd", "--config", "a.toml", "serve", "--config", "x.toml"]),
            config,
            "the subcommand's own option wins"
        );
        assert!(
            parsed(&["flowd", "--config", "x.toml", "flows", "list"]).is_err(),
            "a client subcommand reads no configuration file"
        );
    }
}
