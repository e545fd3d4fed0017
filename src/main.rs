//! The `ringway` command: `run` serves, `check` validates and builds a config. Kept short:
//! CLI -> `built::load` -> `server::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringway",
    version,
    about = "A thread-per-core API gateway on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve with the given config file.
    Run {
        #[arg(short = 'c', long = "config", default_value = "config/ringway.toml")]
        config: PathBuf,
        /// Take over the listening sockets of the ringway running on this config's upgrade
        /// socket, then tell it to drain (zero-downtime binary upgrade).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and exit.
    Check {
        #[arg(short = 'c', long = "config", default_value = "config/ringway.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // rustls warns on every handshake whose SNI is an IP address (wrk, curl to an IP do
    // that); at the default level that would flood the log, so it only reports errors.
    env_logger::Builder::from_env(
        env_logger::Env::default().filter_or("RINGWAY_LOG", "info,rustls=error"),
    )
    .format_target(false)
    .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => match ringway::built::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} routes, {} upstreams, {} workers)",
                    config.display(),
                    cfg.cfg.routes.len(),
                    cfg.cfg.upstreams.len(),
                    cfg.cfg.server.workers
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringway: {}: {e}", config.display());
                ExitCode::from(2)
            }
        },
        Cmd::Run { config, upgrade } => {
            let cfg = match ringway::built::load(&config) {
                Ok(c) => c,
                Err(e) if upgrade => {
                    eprintln!(
                        "ringway: {}: {e}; upgrade not attempted, the running process keeps serving",
                        config.display()
                    );
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("ringway: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            match ringway::server::run(cfg, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
