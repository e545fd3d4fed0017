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
    },
    /// Validate a config file and exit.
    Check {
        #[arg(short = 'c', long = "config", default_value = "config/ringway.toml")]
        config: PathBuf,
    },
    /// Write Prometheus alerting rules for the `[apis.slo]` thresholds of a config.
    Alerts {
        #[arg(short = 'c', long = "config", default_value = "config/ringway.toml")]
        config: PathBuf,
        /// Write here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// OpenAPI documents: see what `[[apis]]` makes of one.
    Openapi {
        #[command(subcommand)]
        cmd: OpenapiCmd,
    },
}

#[derive(Subcommand)]
enum OpenapiCmd {
    /// Print the routes an OpenAPI 3.0/3.1 document (JSON or YAML) becomes, as TOML.
    Routes {
        spec: PathBuf,
        /// The API's name (the routes' name prefix).
        #[arg(long, default_value = "api")]
        name: String,
        #[arg(long, default_value = "")]
        base_path: String,
        #[arg(long, default_value = "backend")]
        upstream: String,
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
        Cmd::Alerts { config, output } => {
            let cfg = match ringway::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringway: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            let Some(rules) = ringway::config::slo::alert_rules(
                cfg.apis
                    .iter()
                    .filter_map(|a| a.slo.as_ref().map(|s| (a.id(), s))),
            ) else {
                eprintln!(
                    "ringway: {}: no [apis.slo] to write rules for",
                    config.display()
                );
                return ExitCode::from(2);
            };
            match output {
                None => print!("{rules}"),
                Some(p) => {
                    if let Err(e) = std::fs::write(&p, rules) {
                        eprintln!("ringway: {}: {e}", p.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Openapi {
            cmd:
                OpenapiCmd::Routes {
                    spec,
                    name,
                    base_path,
                    upstream,
                },
        } => {
            let out = std::fs::read_to_string(&spec)
                .map_err(|e| e.to_string())
                .and_then(|t| ringway::built::apis::routes_toml(&t, &name, &base_path, &upstream));
            match out {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringway: {}: {e}", spec.display());
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Check { config } => match ringway::built::load(&config) {
            Ok(cfg) if cfg.cfg.config_source.is_some() => {
                match ringway::etcd::check(&cfg, &config) {
                    Ok(summary) => {
                        println!("{}: ok; {summary}", config.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("ringway: {}: {e}", config.display());
                        ExitCode::from(2)
                    }
                }
            }
            Ok(cfg) => {
                println!(
                    "{}: ok ({} routes, {} apis, {} upstreams, {} workers)",
                    config.display(),
                    cfg.cfg.routes.len(),
                    cfg.cfg.apis.len(),
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
        Cmd::Run { config } => {
            let cfg = match ringway::built::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringway: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            match ringway::server::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
