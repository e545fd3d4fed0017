//! The `ringway` command: `run` serves, `check` validates and builds a config. Kept short:
//! CLI -> `built::load` -> `server::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: Mi = Mi;

/// mimalloc, asked for plain blocks where the alignment is one a plain block has anyway (up to
/// 16 bytes, and not above the size: what std's `System` allocator does with malloc). The
/// `mimalloc` crate's allocator always calls `mi_malloc_aligned`, whose fast path stops at 1 KiB:
/// every larger block (a connection's task, its busy state) then took the generic aligned path
/// and over-allocated, ~300 instructions per new connection (perf/RESULTS.md, issue 21n).
struct Mi;

/// What `mi_malloc` guarantees (MI_MAX_ALIGN_SIZE).
const MI_PLAIN_ALIGN: usize = 16;

fn plain(layout: std::alloc::Layout) -> bool {
    layout.align() <= MI_PLAIN_ALIGN && layout.align() <= layout.size()
}

type Plain = unsafe extern "C" fn(usize) -> *mut std::ffi::c_void;
type Aligned = unsafe extern "C" fn(usize, usize) -> *mut std::ffi::c_void;

/// A block for `layout` from `plain_fn` where a plain block is aligned enough, else `aligned_fn`.
///
/// # Safety
/// As `GlobalAlloc::alloc`; the two functions are mimalloc's allocating calls.
#[inline]
unsafe fn block(layout: std::alloc::Layout, plain_fn: Plain, aligned_fn: Aligned) -> *mut u8 {
    if plain(layout) {
        plain_fn(layout.size()).cast()
    } else {
        aligned_fn(layout.size(), layout.align()).cast()
    }
}

// SAFETY: every block comes from mimalloc and goes back to `mi_free`, which takes blocks from
// both the plain and the aligned calls; a plain block is only handed out where `plain` holds, so
// it is aligned as the layout asks; the aligned calls get the layout's own alignment.
unsafe impl std::alloc::GlobalAlloc for Mi {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        block(
            layout,
            libmimalloc_sys::mi_malloc,
            libmimalloc_sys::mi_malloc_aligned,
        )
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        block(
            layout,
            libmimalloc_sys::mi_zalloc,
            libmimalloc_sys::mi_zalloc_aligned,
        )
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MI_PLAIN_ALIGN && layout.align() <= new_size {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

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

/// Turns transparent huge pages off for this process before it allocates much (a prctl; the
/// kernel then backs no mapping of ours with 2 MiB pages, whatever the system's THP mode).
///
/// Why: mimalloc asked for huge pages on its 1 GiB arena (`madvise(MADV_HUGEPAGE)`, now compiled
/// out with libmimalloc-sys' `no_thp`), so any 2 MiB stretch touched once stayed resident as a
/// whole, and a purge of the freed 64 KiB pages inside it returned nothing. After a burst of
/// 10,000 connections that was half the gateway's RSS: 1.3 KiB per idle connection against
/// 0.6-1.0 KiB without (perf/idle-rss.sh; perf/RESULTS.md, issue 21m). A proxy's working set is
/// small, so the TLB misses this saves are few.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        // Old kernels (before 3.15) lack it: memory use is then as before, nothing breaks.
        log::debug!(
            "transparent huge pages stay on: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn main() -> ExitCode {
    // rustls warns on every handshake whose SNI is an IP address (wrk, curl to an IP do
    // that); at the default level that would flood the log, so it only reports errors.
    env_logger::Builder::from_env(
        env_logger::Env::default().filter_or("RINGWAY_LOG", "info,rustls=error"),
    )
    .format_target(false)
    .init();
    no_huge_pages();
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
