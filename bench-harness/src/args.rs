//! Command-line surface (clap) and its validation into `LoadConfig` / `ServeConfig`.
//! Owns every user-facing flag and its error text; must not start threads or open sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::scenario::{self, Mix, RequestSpec};
use crate::url::Url;

#[derive(Parser, Debug)]
#[command(
    name = "ringway-bench",
    version,
    about = "wrk-style HTTP/1.1 load generator (closed and open loop) and a static test server",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a minimal thread-per-core static HTTP/1.1 server (a fast upstream for benchmarks).
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Target URL, e.g. http://127.0.0.1:8080/
    pub url: Option<String>,
    /// Extra target as URL@WEIGHT for mixed traffic (repeatable; same host:port as the others)
    #[arg(long = "url", value_name = "URL[@WEIGHT]")]
    pub urls: Vec<String>,
    /// TOML file with [[request]] entries: url, method, headers, body|body_file, weight
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Worker threads, one io_uring runtime each [default: online CPUs]
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Cores to pin worker threads to, e.g. 0,1 [default: the allowed cores, in order]
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Open connections, spread across threads
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: usize,
    /// Measured run length (10s, 1m, 500ms) [default: 10s; required with --rate]
    #[arg(short = 'd', long, value_parser = crate::duration::parse)]
    pub duration: Option<Duration>,
    /// Unmeasured run time before the measurement starts
    #[arg(long, value_parser = crate::duration::parse, default_value = "0s")]
    pub warmup: Duration,
    /// Open loop: total requests/s on a fixed schedule, latency from intended send time
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,
    /// Open loop: busy-poll this long before each send time instead of trusting the timer alone
    /// (fewer microseconds of send error for more CPU: a thread whose sends are closer together
    /// than this polls without a break; 0 turns it off)
    #[arg(long, value_parser = crate::duration::parse, default_value = "50us")]
    pub spin: Duration,
    /// Requests written back to back per connection before reading (closed loop only)
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Per-request timeout (connect, write and response)
    #[arg(long, value_parser = crate::duration::parse, default_value = "2s")]
    pub timeout: Duration,
    /// HTTP method
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,
    /// Request header "Name: value" (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Request body
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body read from a file
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,
    /// Open a new connection for every request (sends Connection: close)
    #[arg(long)]
    pub no_keepalive: bool,
    /// Print the full latency percentile spectrum
    #[arg(long)]
    pub latency: bool,
    /// Print one JSON object on stdout instead of the human summary
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON object to FILE (for --compare), keeping the human summary on stdout
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Also write a one-page HTML report (percentile plot, requests/s over time, errors)
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Compare two saved --json reports side by side (ratios B/A) instead of running load
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"])]
    pub compare: Vec<PathBuf>,
    /// Skip the initial connect check; failures are then only counted as connect errors
    #[arg(long)]
    pub no_preflight: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`)
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Threads, each with its own SO_REUSEPORT listener [default: online CPUs]
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Cores to pin threads to, e.g. 0,1
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Response body size in bytes
    #[arg(long, default_value_t = 13)]
    pub body_size: usize,
    /// Status code of every response
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// Fixed delay before each response (batch of pipelined responses), counted from when the
    /// request's bytes were read; kept by a timerfd, so sub-millisecond values work
    #[arg(long, value_parser = crate::duration::parse)]
    pub delay: Option<Duration>,
    /// Busy-poll this long before each delayed response is due (see the generator's --spin)
    #[arg(long, value_parser = crate::duration::parse, default_value = "0s")]
    pub spin: Duration,
    /// Stall the response to the N-th request (counted across threads) once
    #[arg(long, value_name = "N")]
    pub stall_once_after: Option<u64>,
    /// How long the one-off stall lasts
    #[arg(long, value_parser = crate::duration::parse, default_value = "1s")]
    pub stall: Duration,
}

pub struct LoadConfig {
    pub label: String,
    pub addr: SocketAddr,
    pub mix: Arc<Mix>,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub rate: Option<f64>,
    pub spin: Duration,
    pub pipeline: usize,
    pub timeout: Duration,
    pub keepalive: bool,
    pub latency: bool,
    pub json: bool,
    pub json_out: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub preflight: bool,
}

pub struct ServeConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub body_size: usize,
    pub status: u16,
    pub delay: Option<Duration>,
    pub spin: Duration,
    pub stall_once_after: Option<u64>,
    pub stall: Duration,
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl LoadArgs {
    pub fn validate(self) -> Result<LoadConfig, String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.pipeline == 0 {
            return Err("--pipeline must be at least 1".into());
        }
        let duration = match (self.duration, self.rate) {
            (None, Some(_)) => {
                return Err("--rate needs an explicit --duration (e.g. -d 30s)".into())
            }
            (None, None) => Duration::from_secs(10),
            (Some(d), _) if d.is_zero() => {
                return Err("--duration must be greater than zero".into())
            }
            (Some(d), _) => d,
        };
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err("--rate must be a positive number of requests per second".into());
            }
            if self.pipeline > 1 {
                return Err(
                    "--pipeline > 1 is only supported in closed loop (without --rate)".into(),
                );
            }
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be greater than zero".into());
        }
        let threads = self.threads.unwrap_or_else(default_threads);
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        let specs = self.request_specs()?;
        let first = &specs[0].url;
        if let Some(other) = specs
            .iter()
            .find(|s| s.url.host != first.host || s.url.port != first.port)
        {
            return Err(format!(
                "all URLs must share one host:port (got {}:{} and {}:{})",
                first.host, first.port, other.url.host, other.url.port
            ));
        }
        let addr = first.resolve()?;
        let label = format!("http://{}{}", first.authority(), first.path);
        let keepalive = !self.no_keepalive;
        Ok(LoadConfig {
            label,
            addr,
            mix: Arc::new(Mix::new(&specs, keepalive)?),
            threads: threads.min(self.connections),
            cpus: self.cpus,
            connections: self.connections,
            duration,
            warmup: self.warmup,
            rate: self.rate,
            spin: self.spin,
            pipeline: self.pipeline,
            timeout: self.timeout,
            keepalive,
            latency: self.latency,
            json: self.json,
            json_out: self.json_out,
            html: self.html,
            preflight: !self.no_preflight,
        })
    }

    fn request_specs(&self) -> Result<Vec<RequestSpec>, String> {
        let headers = self
            .headers
            .iter()
            .map(|h| scenario::parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let body = match (&self.body, &self.body_file) {
            (Some(b), _) => b.clone().into_bytes(),
            (None, Some(path)) => scenario::read_body_file(path)?,
            (None, None) => Vec::new(),
        };
        let method = scenario::check_method(&self.method)?;
        let mut specs = Vec::new();
        let cli_urls = self
            .url
            .iter()
            .map(|u| Ok((u.as_str(), 1)))
            .chain(self.urls.iter().map(|u| scenario::split_weight(u)));
        for item in cli_urls {
            let (url, weight) = item?;
            let url = Url::parse(url)?;
            specs.push(RequestSpec {
                method: method.clone(),
                url,
                headers: headers.clone(),
                body: body.clone(),
                weight,
            });
        }
        if let Some(path) = &self.scenario {
            for mut s in scenario::load_scenario(path)? {
                // -H applies to every request; scenario headers come after so they can add more.
                let mut all = headers.clone();
                all.append(&mut s.headers);
                s.headers = all;
                specs.push(s);
            }
        }
        if specs.is_empty() {
            return Err("no target: give a URL, --url URL[@WEIGHT] or --scenario FILE".into());
        }
        Ok(specs)
    }
}

impl ServeArgs {
    pub fn validate(self) -> Result<ServeConfig, String> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| format!("invalid --listen address `{}` (want IP:PORT)", self.listen))?;
        let threads = self.threads.unwrap_or_else(default_threads);
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if !(100..=999).contains(&self.status) {
            return Err(format!(
                "--status {} is not a valid HTTP status code",
                self.status
            ));
        }
        if self.stall_once_after == Some(0) {
            return Err("--stall-once-after counts from 1".into());
        }
        Ok(ServeConfig {
            listen,
            threads,
            cpus: self.cpus,
            body_size: self.body_size,
            status: self.status,
            delay: self.delay.filter(|d| !d.is_zero()),
            spin: self.spin,
            stall_once_after: self.stall_once_after,
            stall: self.stall,
        })
    }
}
