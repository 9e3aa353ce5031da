//! The `command` handler: a phase in any language, as a subprocess that reads the context on
//! stdin and writes its output JSON on stdout.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use flowd_actors::handler::{HandlerError, Heartbeat, PhaseContext, PhaseResult};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tracing::{debug, instrument, warn};

use super::{DEFAULT_MAX_OUTPUT_BYTES, bad_params, context_body, parse_reply};

/// How much of stderr the failure journal keeps: its end, where the error usually is.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// `ENOEXEC` on Linux: the file exists but is no program the kernel can start.
const ENOEXEC: i32 = 8;

/// The `command` phase's `params`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandParams {
    /// Looked up on `PATH` unless it contains a `/`.
    program: String,
    #[serde(default)]
    args: Vec<String>,
    /// Added to flowd's own environment.
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    #[serde(default = "default_max_output_bytes")]
    max_output_bytes: usize,
}

fn default_max_output_bytes() -> usize {
    DEFAULT_MAX_OUTPUT_BYTES
}

/// Runs one attempt of a `command` phase.
///
/// The child is killed when the flow is cancelled and, through `kill_on_drop`, when the runtime
/// aborts this future on timeout: a phase never leaves a process behind.
#[instrument(skip_all, fields(flow_id = %ctx.flow_id, phase = %ctx.phase, attempt = ctx.attempt))]
pub(super) async fn run(ctx: PhaseContext) -> PhaseResult {
    let params: CommandParams = super::params("command", &ctx)?;
    if let Some(cwd) = &params.cwd
        && !cwd.is_dir()
    {
        return Err(bad_params(
            "command",
            format!("`cwd` {} is not a directory", cwd.display()),
        ));
    }
    let stdin_body = context_body(&ctx)?;
    let mut command = Command::new(&params.program);
    command
        .args(&params.args)
        .envs(&params.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = &params.cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .spawn()
        .map_err(|error| spawn_error(&params.program, &error))?;
    debug!(program = %params.program, pid = child.id(), "command started");

    let finished = tokio::select! {
        finished = communicate(&mut child, stdin_body, params.max_output_bytes, &ctx.heartbeat) => finished,
        () = ctx.cancellation.cancelled() => {
            if let Err(error) = child.start_kill() {
                warn!(%error, "could not kill the cancelled command");
            }
            // Reap it so no zombie outlives the attempt.
            let _ = child.wait().await;
            return Err(HandlerError::fatal("cancelled", "the command was killed: attempt cancelled"));
        }
    };
    let Finished {
        status,
        stdout,
        stdout_overflow,
        stderr_tail,
    } = finished.map_err(|error| {
        HandlerError::retryable(
            "command_failed",
            format!("talking to `{}` failed: {error}", params.program),
        )
    })?;
    let stderr = String::from_utf8_lossy(&stderr_tail).into_owned();
    if !status.success() {
        let (message, diagnostic) = exit_failure(&params.program, status, stderr);
        return Err(HandlerError::retryable("command_failed", message).with_diagnostic(diagnostic));
    }
    let mut diagnostic = Map::new();
    diagnostic.insert("program".into(), Value::String(params.program.clone()));
    diagnostic.insert("stderr".into(), Value::String(stderr));
    if stdout_overflow {
        diagnostic.insert(
            "output_excerpt".into(),
            Value::String(super::excerpt(&stdout)),
        );
        return Err(HandlerError::retryable(
            "bad_output",
            format!(
                "`{}` wrote more than max_output_bytes ({}) to stdout",
                params.program, params.max_output_bytes
            ),
        )
        .with_diagnostic(Value::Object(diagnostic)));
    }
    parse_reply(&stdout, diagnostic)
}

/// What a finished child left behind.
struct Finished {
    status: ExitStatus,
    /// At most `max_output_bytes`.
    stdout: Vec<u8>,
    /// Whether stdout went past the bound (the rest was read and dropped).
    stdout_overflow: bool,
    stderr_tail: Vec<u8>,
}

/// Feeds stdin, drains stdout and stderr and waits for the exit, all at once: a child that
/// writes before it reads must not deadlock against a full pipe. Whatever the child writes
/// counts as a heartbeat, so a long command shows progress by logging to stderr.
async fn communicate(
    child: &mut Child,
    stdin_body: Vec<u8>,
    max_output_bytes: usize,
    heartbeat: &Heartbeat,
) -> io::Result<Finished> {
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A child that exits without reading its input is its own business: ignore EPIPE.
            let _ = stdin.write_all(&stdin_body).await;
            let _ = stdin.shutdown().await;
        }
    };
    let (_, stdout, stderr, status) = tokio::join!(
        feed,
        read_head(stdout, max_output_bytes, heartbeat),
        read_tail(stderr, STDERR_TAIL_BYTES, heartbeat),
        child.wait(),
    );
    let (stdout, stdout_overflow) = stdout?;
    Ok(Finished {
        status: status?,
        stdout,
        stdout_overflow,
        stderr_tail: stderr?,
    })
}

/// Reads to the end, keeping the first `limit` bytes; says whether there was more.
async fn read_head(
    reader: Option<impl AsyncRead + Unpin>,
    limit: usize,
    heartbeat: &Heartbeat,
) -> io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut overflow = false;
    let Some(mut reader) = reader else {
        return Ok((kept, overflow));
    };
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok((kept, overflow));
        }
        heartbeat.beat();
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..read.min(room)]);
        overflow |= read > room;
    }
}

/// Reads to the end, keeping only the last `limit` bytes.
async fn read_tail(
    reader: Option<impl AsyncRead + Unpin>,
    limit: usize,
    heartbeat: &Heartbeat,
) -> io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let Some(mut reader) = reader else {
        return Ok(kept);
    };
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        heartbeat.beat();
        kept.extend_from_slice(&buffer[..read]);
        // Trim only now and then, so the buffer stays within twice the limit.
        if kept.len() > 2 * limit {
            kept.drain(..kept.len() - limit);
        }
    }
    if kept.len() > limit {
        kept.drain(..kept.len() - limit);
    }
    Ok(kept)
}

/// A program that cannot be started is *unavailable*, not failing: a fallback can take over,
/// and retrying the same missing program is pointless.
fn spawn_error(program: &str, error: &io::Error) -> HandlerError {
    let unavailable = matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || error.raw_os_error() == Some(ENOEXEC);
    let diagnostic = json!({ "program": program, "error": error.to_string() });
    if unavailable {
        HandlerError::unavailable(format!("cannot run `{program}`: {error}"))
            .with_diagnostic(diagnostic)
    } else {
        HandlerError::retryable(
            "command_failed",
            format!("could not start `{program}`: {error}"),
        )
        .with_diagnostic(diagnostic)
    }
}

/// The message and diagnostic of a non-zero exit or a death by signal.
fn exit_failure(program: &str, status: ExitStatus, stderr: String) -> (String, Value) {
    let message = match (status.code(), status.signal()) {
        (Some(code), _) => format!("`{program}` exited with code {code}"),
        (None, Some(signal)) => format!("`{program}` was killed by signal {signal}"),
        (None, None) => format!("`{program}` failed: {status}"),
    };
    let diagnostic = json!({
        "program": program,
        "exit_code": status.code(),
        "signal": status.signal(),
        "stderr": stderr,
    });
    (message, diagnostic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_tail_keeps_the_last_bytes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(Some(&data[..]), 8192, &Heartbeat::default())
            .await
            .unwrap();
        assert_eq!(tail, data[data.len() - 8192..]);
    }

    #[tokio::test]
    async fn the_head_is_bounded_and_says_so() {
        let data = vec![b'x'; 50_000];
        let (head, overflow) = read_head(Some(&data[..]), 1000, &Heartbeat::default())
            .await
            .unwrap();
        assert_eq!(head.len(), 1000);
        assert!(overflow);
        let (head, overflow) = read_head(Some(&data[..]), 50_000, &Heartbeat::default())
            .await
            .unwrap();
        assert_eq!(head.len(), 50_000);
        assert!(!overflow);
    }
}
