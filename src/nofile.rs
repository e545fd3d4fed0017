//! The open-files limit at start-up: raise the soft limit to the hard one, and say once, with
//! the numbers, when the config can need more descriptors than that. Touches nothing else.

use crate::config::Config;

/// Descriptors the process holds besides connections: listeners, rings, wake-up pairs, logs,
/// the status/admin/health threads' sockets.
const BASE: u64 = 64;

/// What the config can use at most: every shard full of clients (each may hold an upstream
/// connection too: x2), plus every upstream keep-alive pool full on every shard.
pub fn needed(cfg: &Config) -> (u64, u64) {
    let workers = cfg.server.workers as u64;
    let conns = workers * cfg.server.max_connections as u64 * 2;
    let pools: u64 = cfg
        .upstreams
        .iter()
        .map(|u| u.nodes.len() as u64 * u.pool.size as u64 * workers)
        .sum();
    (conns, pools)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and warns (once) when `cfg` can need more.
/// A gateway out of descriptors accepts nothing and only logs `Too many open files`; this says
/// so at start instead.
pub fn raise_and_check(cfg: &Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        log::warn!(
            "cannot read the open-files limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from `raised`, which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
            log::info!(
                "open-files limit raised from {before} to {} (the hard limit)",
                lim.rlim_cur
            );
        } else {
            log::warn!(
                "cannot raise the open-files limit from {before} to {}: {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    let (conns, pools) = needed(cfg);
    let need = conns + pools + BASE;
    if need > lim.rlim_cur {
        log::warn!(
            "open-files limit {} is below what this config can use: {} workers x {} max_connections x 2 = {conns}, \
             + {pools} pooled upstream connections + {BASE} = {need}; raise the hard limit (LimitNOFILE=, ulimit -Hn) \
             or lower server.max_connections, else new connections are refused once it is reached",
            lim.rlim_cur,
            cfg.server.workers,
            cfg.server.max_connections
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_connections_twice_and_every_pool_on_every_shard() {
        let cfg = crate::config::from_str(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 3\nmax_connections = 100\n\
             [[upstreams]]\nname = \"u\"\nnodes = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }]\n\
             keepalive_pool = { size = 10 }\n\
             [[routes]]\nname = \"r\"\npaths = [\"/*\"]\nupstream = \"u\"\n",
        )
        .expect("config");
        assert_eq!(super::needed(&cfg), (600, 60));
    }
}
