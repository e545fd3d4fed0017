//! The etcd calls ringway makes, each under the configured timeout: connect, read the whole
//! prefix at one revision (paged), and a compare-and-swap transaction. Runs on the etcd
//! thread's tokio runtime only; knows nothing of the document or the shards.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use crate::config::source::EtcdSource;

/// Keys per page of the start-up read / resync (gRPC messages stay far below the 4 MiB limit).
const PAGE: i64 = 2000;

/// One key under the prefix as read.
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_rev: i64,
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}

fn read_pem(p: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// A client for `src` (the connection itself is made by the first call).
pub async fn connect(src: &EtcdSource) -> Result<Client, String> {
    // No HTTP/2 keep-alive pings: etcd answers pings more often than every 5 s with GOAWAY
    // (its --grpc-keepalive-min-time). A silent etcd is noticed by the watch's progress
    // requests instead (see `watch`).
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(src.timeout)
        .with_tcp_keepalive(Duration::from_secs(30));
    if let (Some(u), Some(p)) = (&src.username, &src.password) {
        opts = opts.with_user(u.clone(), p.clone());
    }
    if let Some(t) = &src.tls {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &t.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read_pem(ca)?));
        }
        if let (Some(c), Some(k)) = (&t.cert, &t.key) {
            tls = tls.identity(etcd_client::Identity::from_pem(read_pem(c)?, read_pem(k)?));
        }
        if let Some(d) = &t.domain {
            tls = tls.domain_name(d.clone());
        }
        opts = opts.with_tls(tls);
    }
    timed(
        src.timeout,
        "connect",
        Client::connect(&src.endpoints, Some(opts)),
    )
    .await
}

/// Every key under `prefix/` at one revision, and that revision. Pages after the first read
/// at the first page's revision, so the whole is one consistent snapshot.
pub async fn read_all(
    client: &mut Client,
    prefix: &str,
    limit: Duration,
) -> Result<(Vec<Kv>, i64), String> {
    let end = super::keys::range_end(prefix);
    let mut from = format!("{prefix}/").into_bytes();
    let mut rev = 0;
    let mut out = Vec::new();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if rev != 0 {
            opts = opts.with_revision(rev);
        }
        let resp = timed(limit, "read", client.get(from.clone(), Some(opts))).await?;
        if rev == 0 {
            rev = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            out.push(Kv {
                key: kv.key().to_vec(),
                value: kv.value().to_vec(),
                mod_rev: kv.mod_revision(),
            });
        }
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((out, rev)),
        }
    }
}

/// Writes (`Some`) or deletes (`None`) every key, all or none, if each key's mod revision is
/// still the one given (0: the key must not exist). `Ok(Some(rev))`: committed at `rev`;
/// `Ok(None)`: some key changed meanwhile.
pub async fn swap(
    client: &mut Client,
    ops: Vec<(String, i64, Option<Vec<u8>>)>,
    limit: Duration,
) -> Result<Option<i64>, String> {
    let cmps: Vec<Compare> = ops
        .iter()
        .map(|(k, rev, _)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev))
        .collect();
    let puts: Vec<TxnOp> = ops
        .into_iter()
        .map(|(k, _, v)| match v {
            Some(v) => TxnOp::put(k, v, None),
            None => TxnOp::delete(k, None),
        })
        .collect();
    let resp = timed(
        limit,
        "write",
        client.txn(Txn::new().when(cmps).and_then(puts)),
    )
    .await?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map_or(0, |h| h.revision())))
}
