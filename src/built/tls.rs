//! TLS for a built generation: reads the certificate files the config names and builds the
//! rustls configs (listeners, upstream connectors). Main/admin thread only; errors name the key.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use rustls::server::ProducesTickets;

use crate::net::tickets::Tickets;
use crate::net::tls::{build_server_config, new_ticketer};
use crate::net::tls_client::{self, UpstreamTls};

/// One rustls config per TLS listener, in `server.listen` order (`None` for plain ones), all
/// sharing one ticket-key source (returned too, `None` without TLS listeners) so a ticket from
/// any shard resumes on every other.
pub fn listeners(cfg: &Config) -> Result<(Listeners, Option<Arc<Tickets>>), ConfigError> {
    let mut ticketer = None;
    let mut out = Vec::with_capacity(cfg.server.tls.len());
    for (i, spec) in cfg.server.tls.iter().enumerate() {
        let Some(spec) = spec else {
            out.push(None);
            continue;
        };
        let t = match &ticketer {
            Some(t) => Arc::clone(t),
            None => {
                let t = new_ticketer()
                    .map_err(|e| ConfigError::new(format!("server.listen[{i}].tls"), e))?;
                ticketer = Some(Arc::clone(&t));
                t
            }
        };
        let config = build_server_config(spec, t as Arc<dyn ProducesTickets>)
            .map_err(|e| ConfigError::new(format!("server.listen[{i}]"), e))?;
        out.push(Some(config));
    }
    Ok((out, ticketer))
}

/// Per listen address, the rustls config of a TLS listener.
pub type Listeners = Vec<Option<Arc<rustls::ServerConfig>>>;

/// One connector per upstream with `scheme = "https"`, in `upstreams` order, with the name each
/// node is verified against (the configured SNI, or the node's host).
pub fn upstreams(cfg: &Config) -> Result<Vec<Option<UpstreamTls>>, ConfigError> {
    cfg.upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let Some(spec) = &u.tls else {
                return Ok(None);
            };
            let hosts: Vec<&str> = u.nodes.iter().map(|n| host_of(&n.host)).collect();
            tls_client::build(spec, &hosts)
                .map(Some)
                .map_err(|e| ConfigError::new(format!("upstreams[{i}].tls"), e))
        })
        .collect()
}

/// `example.com:443` -> `example.com`, `[::1]:443` -> `::1`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}
