//! The status listener (`/metrics`, `/status`, `/healthz`) and the admin API listener, each on
//! its own thread off the shards' event loops, plus the control plane they share. Must not be
//! reached from the request path: shards only ever see what arrives on their control channels.

pub mod http;
pub mod plane;

use std::net::TcpListener;
use std::sync::Arc;

use http::{Request, Response};
pub use plane::Plane;

/// Binds and starts the status listener if `[status]` is configured (after the shards'
/// "listening on" lines, which tests read first).
pub fn start_status(plane: &Arc<Plane>) -> Result<(), String> {
    let Some(st) = plane.config().status.clone() else {
        return Ok(());
    };
    let l = TcpListener::bind(st.listen)
        .map_err(|e| format!("status: cannot listen on {}: {e}", st.listen))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let p = plane.clone();
    http::spawn(l, "status", Arc::new(move |r: &Request| status(&p, r)))
        .map_err(|e| format!("status: cannot start thread: {e}"))?;
    log::info!("status listening on {addr}");
    Ok(())
}

fn status(plane: &Plane, r: &Request) -> Response {
    if r.method != "GET" && r.method != "HEAD" {
        return Response::error(405, "only GET");
    }
    match r.path.as_str() {
        "/metrics" => {
            let snaps = plane.gather();
            let text = crate::metrics::expose::prometheus(&plane.info(), &snaps);
            Response::text(200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        "/status" => {
            let snaps = plane.gather();
            Response::json(
                200,
                &crate::metrics::expose::status_json(&plane.info(), &snaps),
            )
        }
        "/healthz" => {
            // Healthy when every shard answers its control channel: a wedged event loop shows here.
            let n = plane.gather().len();
            if n == plane.shards() {
                Response::text(200, "text/plain", "ok\n")
            } else {
                Response::text(
                    503,
                    "text/plain",
                    format!("{n}/{} shards answering\n", plane.shards()),
                )
            }
        }
        _ => Response::error(404, "not found; try /metrics, /status or /healthz"),
    }
}
