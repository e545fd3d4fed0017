//! Entry point of `ringway-bench`: parses the command line and dispatches to a load test or to
//! `serve`. Owns exit codes and the one-line error format; must not hold benchmark logic.

mod args;
mod client;
mod compare;
mod duration;
mod hist;
mod html;
mod http;
mod pacer;
mod progress;
mod report;
mod runtime;
mod scenario;
mod serve;
mod url;
mod worker;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            // clap's multi-line usage dump is noise for scripts: keep its first line only.
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            let line = line.trim_start_matches("error: ");
            eprintln!("ringway-bench: error: {line} (see --help)");
            std::process::exit(2);
        }
    };
    let result = match cli.cmd {
        Some(args::Cmd::Serve(a)) => a.validate().and_then(serve::run),
        None if !cli.load.compare.is_empty() => {
            compare::run(&cli.load.compare[0], &cli.load.compare[1]).map(|t| print_stdout(&t))
        }
        None => cli.load.validate().and_then(load),
    };
    if let Err(e) = result {
        eprintln!("ringway-bench: error: {e}");
        std::process::exit(1);
    }
}

fn load(cfg: args::LoadConfig) -> Result<(), String> {
    if cfg.preflight {
        worker::preflight(&cfg)?;
    }
    let result = worker::run(&cfg)?;
    if let Some(path) = &cfg.json_out {
        write_file(path, &report::json(&cfg, &result)?)?;
    }
    if let Some(path) = &cfg.html {
        write_file(path, &html::page(&cfg, &result))?;
    }
    let text = if cfg.json {
        report::json(&cfg, &result)?
    } else {
        report::human(&cfg, &result)
    };
    print_stdout(&text);
    Ok(())
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `println!` panics on a closed pipe (`ringway-bench ... | head`); a reader that left early
/// is not our error, so the output is simply dropped.
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}
