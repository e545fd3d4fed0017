//! The fleet thread's Redis side: connecting (standalone or cluster, every step under the
//! limiter's timeout), the two atomic scripts that arbitrate caps and shares between nodes, and
//! one exchange (all calls written back to back on one multiplexed connection, awaited together).
//! Must not touch shards: the caller turns answers into grants.

use std::time::Duration;

use redis::{Cmd, ErrorKind, RedisResult};
use tokio::task::JoinSet;

use crate::limit::fleet::{key_tag as tag, Kind, Store};
use crate::limit::node::{Answer, Ask, SHARE_ONE};

/// limit-count, per key: KEYS = (this window's hash, the previous window's); ARGV = node id,
/// limit, ttl ms, now ms, stale ms, then (count, floor, demand) per key. Fields are
/// `count,alloc,demand,ts` per node. A node's cap is its demand-weighted part of what the other
/// nodes leave (their count or allocation, whichever is larger; a node silent for `stale` ms
/// holds only its count), at least its fair part of the limit when that much is free. The cap
/// is recomputed from scratch on every call: holding on to what the node's shards were given
/// (its floor) as the cap kept an idle node's reservation forever, since shards size their
/// allocations from the cap. The floor is only *stored* as the node's reservation (with the
/// cap, whichever is larger): the node's count is one shard tick old, and its shards may have
/// admitted up to their allocations since. Sum of reservations <= limit whenever floors are
/// within caps, since the script runs atomically. The
/// first call of a window seeds it with the other nodes' opening parts from the previous
/// window's demand, as each node opens with locally.
pub const COUNT_SCRIPT: &str = r"
local me, limit, ttl, now, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function parse(v)
  local c, a, d, t = string.match(v, '^(%d+),(%d+),(%d+),(%d+)$')
  if not c then return nil end
  return tonumber(c), tonumber(a), tonumber(d), tonumber(t)
end
local out = {}
for i = 1, #KEYS / 2 do
  local cur, prev = KEYS[2 * i - 1], KEYS[2 * i]
  local b = 5 + 3 * (i - 1)
  local count, floor, demand = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  if redis.call('EXISTS', cur) == 0 then
    local p = redis.call('HGETALL', prev)
    local plan, n, total = {}, 1, demand
    for j = 1, #p, 2 do
      local c, a, d, t = parse(p[j + 1])
      if c and p[j] ~= me and now - t <= stale then
        plan[p[j]] = d
        n = n + 1
        total = total + d
      end
    end
    for node, d in pairs(plan) do
      local open = math.floor(limit * (d + 1) / (total + n))
      redis.call('HSET', cur, node, '0,' .. open .. ',' .. d .. ',' .. now)
    end
  end
  local h = redis.call('HGETALL', cur)
  local others, od, n = 0, 0, 1
  for j = 1, #h, 2 do
    if h[j] ~= me then
      local c, a, d, t = parse(h[j + 1])
      if c then
        if now - t <= stale then
          others = others + math.max(c, a)
          od = od + d
          n = n + 1
        else
          others = others + c
        end
      end
    end
  end
  local left = math.max(limit - count - others, 0)
  local w = (demand + 1) / (demand + od + n)
  local share = math.floor(left * w)
  if share == 0 and left > 0 and demand > 0 then share = 1 end
  local cap = count + share
  cap = math.max(cap, math.min(math.floor(limit * w), count + left))
  cap = math.max(cap, count)
  redis.call('HSET', cur, me, count .. ',' .. math.max(cap, floor) .. ',' .. demand .. ',' .. now)
  redis.call('PEXPIRE', cur, ttl)
  out[#out + 1] = cap
  out[#out + 1] = od
  out[#out + 1] = n
end
return out
";

/// limit-req, per key: KEYS = the key's hash; ARGV = node id, now ms, stale ms, ttl ms, then
/// demand (per second x1000) per key. Fields are `share,demand,ts` per node, shares in
/// millionths. A node's share is its part of the cluster's demand, never more than the other
/// nodes' shares leave (they give back at their next call); silent nodes are removed.
pub const REQ_SCRIPT: &str = r"
local me, now, stale, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ONE = 1000000
local out = {}
for i = 1, #KEYS do
  local d = tonumber(ARGV[4 + i])
  local h = redis.call('HGETALL', KEYS[i])
  local others, od, n = 0, 0, 1
  for j = 1, #h, 2 do
    if h[j] ~= me then
      local s, dd, t = string.match(h[j + 1], '^(%d+),(%d+),(%d+)$')
      if s and now - tonumber(t) <= stale then
        others = others + tonumber(s)
        od = od + tonumber(dd)
        n = n + 1
      else
        redis.call('HDEL', KEYS[i], h[j])
      end
    end
  end
  local want = 0
  if d > 0 then want = math.floor(ONE * d / (d + od)) end
  local share = math.max(math.min(want, ONE - others), 0)
  redis.call('HSET', KEYS[i], me, share .. ',' .. d .. ',' .. now)
  redis.call('PEXPIRE', KEYS[i], ttl)
  out[#out + 1] = share
  out[#out + 1] = od
  out[#out + 1] = n
end
return out
";

/// Keys of one standalone script call (a cluster call carries one key: its hash tag's slot).
const BATCH: usize = 256;

/// A live connection to a store.
#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    async fn query(&mut self, cmd: &Cmd) -> RedisResult<Vec<i64>> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Runs `cmd`; a store that lost its script cache (restarted) gets the script again.
    async fn eval(
        &mut self,
        sha: &str,
        script: &str,
        keys: &[String],
        args: &[String],
    ) -> RedisResult<Vec<i64>> {
        let build = |name: &str, first: &str| {
            let mut c = redis::cmd(name);
            c.arg(first).arg(keys.len()).arg(keys).arg(args);
            c
        };
        match self.query(&build("EVALSHA", sha)).await {
            Err(e) if e.kind() == ErrorKind::NoScriptError => {
                crate::metrics::fleet::FLEET
                    .commands
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.query(&build("EVAL", script)).await
            }
            r => r,
        }
    }
}

/// Connects to `store`, bounded by `timeout` (each connect and the first round trip).
pub async fn connect(store: &Store, timeout: Duration) -> Result<Conn, String> {
    let fut = async {
        match store {
            Store::Redis {
                addr,
                password,
                database,
            } => {
                let (host, port) = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| format!("bad address {addr:?}"))?;
                let redis = redis::RedisConnectionInfo {
                    db: *database,
                    password: password.clone(),
                    ..Default::default()
                };
                let info = redis::ConnectionInfo {
                    addr: redis::ConnectionAddr::Tcp(host, port),
                    redis,
                };
                let client = redis::Client::open(info).map_err(|e| e.to_string())?;
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                let c = client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Conn::Single(c))
            }
            Store::Cluster { nodes, password } => {
                let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}")).collect();
                let mut b = redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2);
                if let Some(p) = password {
                    b = b.password(p.clone());
                }
                let client = b.build().map_err(|e| e.to_string())?;
                let c = client
                    .get_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Conn::Cluster(c))
            }
        }
    };
    match tokio::time::timeout(timeout * 2, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

/// One limiter's part of an exchange.
pub struct Batch {
    pub ns: String,
    pub kind: Kind,
    pub node: String,
    pub now_ms: u64,
    pub window: u64,
    pub stale_ms: u64,
    pub asks: Vec<Ask>,
}

pub fn count_key(ns: &str, key: u64, window: u64) -> String {
    format!("ringway:lc:{}:{window}", tag(ns, key))
}

pub fn req_key(ns: &str, key: u64) -> String {
    format!("ringway:lr:{}", tag(ns, key))
}

/// One script call: its keys, its args and which asks of which batch it answers.
struct Call {
    batch: usize,
    from: usize,
    keys: Vec<String>,
    args: Vec<String>,
}

fn calls(batches: &[Batch], cluster: bool) -> Vec<Call> {
    let per = if cluster { 1 } else { BATCH };
    let mut out = Vec::new();
    for (bi, b) in batches.iter().enumerate() {
        for (ci, chunk) in b.asks.chunks(per).enumerate() {
            let mut keys = Vec::with_capacity(chunk.len() * 2);
            let mut args = Vec::with_capacity(5 + chunk.len() * 3);
            match b.kind {
                Kind::Count { limit, window_ms } => {
                    let ttl = 2 * window_ms + b.stale_ms;
                    args.extend([
                        b.node.clone(),
                        limit.to_string(),
                        ttl.to_string(),
                        b.now_ms.to_string(),
                        b.stale_ms.to_string(),
                    ]);
                    for a in chunk {
                        keys.push(count_key(&b.ns, a.key, b.window));
                        keys.push(count_key(&b.ns, a.key, b.window.saturating_sub(1)));
                        args.extend([
                            a.count.to_string(),
                            a.floor.to_string(),
                            a.demand.to_string(),
                        ]);
                    }
                }
                Kind::Req { .. } => {
                    args.extend([
                        b.node.clone(),
                        b.now_ms.to_string(),
                        b.stale_ms.to_string(),
                        (3 * b.stale_ms).to_string(),
                    ]);
                    for a in chunk {
                        keys.push(req_key(&b.ns, a.key));
                        args.push(a.demand.to_string());
                    }
                }
            }
            out.push(Call {
                batch: bi,
                from: ci * per,
                keys,
                args,
            });
        }
    }
    out
}

/// One exchange: every call of every batch sent at once on `conn` (a multiplexed connection
/// writes them back to back: one round trip), all awaited within `timeout`. Answers line up
/// with each batch's asks.
pub async fn exchange(
    conn: &Conn,
    batches: &[Batch],
    timeout: Duration,
) -> Result<Vec<Vec<Answer>>, String> {
    let cluster = matches!(conn, Conn::Cluster(_));
    let count_sha = redis::Script::new(COUNT_SCRIPT).get_hash().to_string();
    let req_sha = redis::Script::new(REQ_SCRIPT).get_hash().to_string();
    let calls = calls(batches, cluster);
    crate::metrics::fleet::FLEET
        .commands
        .fetch_add(calls.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let mut set = JoinSet::new();
    for (i, call) in calls.iter().enumerate() {
        let mut c = conn.clone();
        let (sha, script) = match batches[call.batch].kind {
            Kind::Count { .. } => (count_sha.clone(), COUNT_SCRIPT),
            Kind::Req { .. } => (req_sha.clone(), REQ_SCRIPT),
        };
        let (keys, args) = (call.keys.clone(), call.args.clone());
        set.spawn(async move { (i, c.eval(&sha, script, &keys, &args).await) });
    }
    let mut results: Vec<Option<Vec<i64>>> = vec![None; calls.len()];
    let all = async {
        while let Some(j) = set.join_next().await {
            let (i, r) = j.map_err(|e| e.to_string())?;
            results[i] = Some(r.map_err(|e| e.to_string())?);
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(timeout, all).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("no answer within {timeout:?}")),
    }
    let mut out: Vec<Vec<Answer>> = batches
        .iter()
        .map(|b| {
            vec![
                Answer {
                    cap: 0,
                    others_demand: 0,
                    nodes: 1
                };
                b.asks.len()
            ]
        })
        .collect();
    for (call, r) in calls.iter().zip(results) {
        let r = r.ok_or("a call went unanswered")?;
        let n = call.keys.len()
            / if matches!(batches[call.batch].kind, Kind::Count { .. }) {
                2
            } else {
                1
            };
        if r.len() != n * 3 {
            return Err(format!("script answered {} values for {n} keys", r.len()));
        }
        for (j, v) in r.chunks(3).enumerate() {
            let cap = match batches[call.batch].kind {
                Kind::Req { .. } => (v[0].max(0) as u64).min(SHARE_ONE),
                Kind::Count { .. } => v[0].max(0) as u64,
            };
            if let Some(slot) = out[call.batch].get_mut(call.from + j) {
                *slot = Answer {
                    cap,
                    others_demand: v[1].max(0) as u64,
                    nodes: v[2].max(1) as u64,
                };
            }
        }
    }
    Ok(out)
}
