//! The `switchyard` command: run, check, export, import.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchyard::config::Config;
use switchyard::store::{ops, Store};

#[derive(Parser)]
#[command(name = "switchyard", version, about = "An AI gateway on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config: built-in defaults, ./data, and a demo consumer.
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take over the listening sockets of a running instance (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Fork into the background, writing <data_dir>/switchyard.pid (systemd Type=forking).
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a config file: exit 0 when valid, 2 with the error otherwise.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print every entity of a stopped gateway's store as one JSON document.
    Export {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Write to this file (mode 0600) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Load an export document into a stopped gateway's store (idempotent, all or nothing).
    Import {
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

fn load(config: Option<&Path>) -> Result<Config, String> {
    match config {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn open_store(config: &Config) -> Result<Store, String> {
    Store::open(&config.data_dir, config.upstream.defaults()).map_err(|e| {
        format!("{e} (is a gateway running on this data_dir? export/import work on a stopped one; use the admin API's /v1/export and /v1/import on a running one)")
    })
}

fn main_inner(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            let mut cfg = load(config.as_deref())?;
            if config.is_none() {
                cfg.demo = true;
            }
            switchyard::server::run(cfg, switchyard::server::RunFlags { upgrade, daemon })
        }
        Command::Check { config } => {
            load(Some(&config))?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Export { config, output } => {
            let cfg = load(config.as_deref())?;
            let doc = ops::export(&open_store(&cfg)?);
            let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
            match output {
                Some(p) => switchyard::admin::token::write_private(&p, text.as_bytes())
                    .map_err(|e| format!("{}: {e}", p.display())),
                None => {
                    println!("{text}");
                    Ok(())
                }
            }
        }
        Command::Import { config, file } => {
            let cfg = load(config.as_deref())?;
            let text = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let doc = serde_json::from_slice(&text)
                .map_err(|e| format!("{}: malformed JSON: {e}", file.display()))?;
            let store = open_store(&cfg)?;
            let out = ops::import(&store, doc).map_err(|e| {
                let field = e.field.map(|f| format!(" at {f}")).unwrap_or_default();
                format!("{}: import refused{field}: {}", file.display(), e.message)
            })?;
            println!("{out}");
            Ok(())
        }
    }
}

// jemalloc: the proxy makes many small, short-lived allocations on several worker threads;
// glibc's malloc spent ~10% of the CPU in them under load (benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. One arena instead of eight (four per core): the
/// store loads on three threads (sled scan, parse, index), and pages freed in one arena
/// could not serve the others, which left ~60 MiB of dirty pages resident once 100,000
/// consumers were loaded. The two proxy workers showed no throughput change with one arena
/// (their thread caches serve most allocations).
///
/// Thread caches up to 64 KiB instead of 32: Pingora reads every upstream answer's body into a
/// fresh 64 KiB buffer, and past the cache's limit each one was a "large" allocation, taking
/// and giving back a page extent under the arena's lock: 2 % of a proxied request's
/// instructions under callgrind, and 1.5–2 µs of its CPU in a `perf` profile. Memory per open
/// stream did not change (39.8 KiB). `MALLOC_CONF`-style overrides still work through the
/// `_RJEM_MALLOC_CONF` environment variable.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"narenas:1,tcache_max:65536".as_ptr() });

fn main() -> ExitCode {
    let result = main_inner(Cli::parse());
    switchyard::telemetry::flush_logs();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::from(2)
        }
    }
}
