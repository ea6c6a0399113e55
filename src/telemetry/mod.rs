//! Metrics (Prometheus, served on the admin listener) and logs (tracing).

pub mod access;
pub mod metrics;
pub mod writeback;

use crate::config::{LogConfig, LogFormat};
use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

/// Log lines waiting for the flusher thread.
static LOG_BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// How often queued lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A writer that finds this much queued writes it out itself (backpressure, nothing dropped).
const MAX_QUEUED: usize = 4 << 20;

fn buffer() -> MutexGuard<'static, Vec<u8>> {
    LOG_BUFFER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Appends whole formatted lines to the shared buffer: no system call and no thread wake-up
/// on the request path.
struct Buffered;

impl std::io::Write for Buffered {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = buffer();
        buf.extend_from_slice(data);
        if buf.len() >= MAX_QUEUED {
            let out = std::mem::take(&mut *buf);
            drop(buf);
            std::io::stderr().write_all(&out)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How the installed subscriber writes: JSON lines or text, through the buffer or straight
/// to stderr. Unset (no subscriber of ours): text, so lines go through `tracing`.
static SINK: OnceLock<Sink> = OnceLock::new();

struct Sink {
    json: bool,
    direct: bool,
}

/// Whether log lines are JSON (hand-written lines must match).
pub fn json_lines() -> bool {
    SINK.get().is_some_and(|s| s.json)
}

/// Writes one whole formatted line where the subscriber writes its own.
pub fn write_line(line: &[u8]) {
    if SINK.get().is_some_and(|s| s.direct) {
        let _ = std::io::stderr().write_all(line);
    } else {
        let _ = Buffered.write_all(line);
    }
}

/// The writeback of stderr, when it is a regular file (see `writeback`).
static STDERR_WRITEBACK: OnceLock<Mutex<Option<writeback::Writeback>>> = OnceLock::new();

/// Writes out the queued log lines (also before `exit`).
pub fn flush_logs() {
    flush_through(&mut Vec::new());
}

/// Writes out the queued log lines, leaving `spare` in the shared buffer's place.
///
/// The flusher passes the same `spare` every time, emptied but with its capacity kept: the two
/// buffers take turns, so the workers append into memory that is already allocated and
/// resident. Taking the buffer and leaving an empty one would have the workers grow a new one
/// each round, copying it on every doubling and faulting in fresh pages on the request path.
fn flush_through(spare: &mut Vec<u8>) {
    spare.clear();
    std::mem::swap(&mut *buffer(), spare);
    if !spare.is_empty() {
        let _ = std::io::stderr().write_all(spare);
        let wb = STDERR_WRITEBACK.get_or_init(|| Mutex::new(writeback::Writeback::of(2)));
        if let Some(wb) = wb.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            wb.wrote();
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` overrides the configured level. Pingora's own
/// `log` records are bridged in. Logs go to stderr; stdout carries only what the CLI prints.
///
/// A worker formats a line and appends it to a buffer; a thread writes the buffer out every
/// 100 ms, so the request path makes no log system call and wakes no thread. A writer that
/// finds 4 MiB queued (stderr stuck) writes it out itself rather than drop lines.
/// `flush_logs` runs before the process exits. When stderr is a file, the flusher also starts
/// the writeback of each MiB written, so the log never waits in the page cache in bulk. A process that will fork (`--daemon`) writes
/// directly instead: the flusher thread would not survive the fork.
pub fn init_logging(cfg: &LogConfig, will_fork: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cfg.level.to_ascii_lowercase()));
    let writer = if will_fork {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(|| Buffered)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Already installed (tests that start twice): keep the first.
    if result.is_err() {
        return;
    }
    let _ = SINK.set(Sink {
        json: matches!(cfg.format, LogFormat::Json),
        direct: will_fork,
    });
    if !will_fork {
        let flusher = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| {
                let mut spare = Vec::new();
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush_through(&mut spare);
                }
            });
        drop(flusher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_leaves_the_workers_a_buffer_that_is_already_allocated() {
        let mut spare = Vec::with_capacity(1 << 16);
        Buffered.write_all(b"a queued line\n").unwrap();
        flush_through(&mut spare);
        // The queued lines were written out from what is now the spare, and the workers
        // append into the spare's memory instead of growing a new buffer.
        assert!(spare.windows(14).any(|l| l == b"a queued line\n"));
        assert!(buffer().capacity() >= 1 << 16);
        let written = spare.capacity();
        flush_through(&mut spare);
        assert!(buffer().capacity() >= written);
    }
}
