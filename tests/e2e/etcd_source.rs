//! Fleet configuration through etcd (`[config_source] etcd`), against a real etcd the test starts:
//! three gateways follow one etcd (propagation measured over 200 changes), invalid objects are
//! refused everywhere, admin writes go through etcd with compare-and-swap, and compaction, an
//! etcd crash, a stopped etcd and a partitioned node end with every node equal to etcd while
//! requests keep succeeding. Start-up from the saved configuration and `ringway check` too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::etcd::{time_until, Etcd, Relay};
use crate::harness::ops::{self, http, Proc};
use crate::harness::{closed_port, cpu_lock, run_cli, server, wait_until, Client, Origin, Resp};

const KEY: &str = "admin-key-0123456789";
const PREFIX: &str = "/rwt";

fn node_config(endpoint: &str, extra: &str) -> String {
    format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{KEY}\"\n\
         [config_source]\netcd = {{ endpoints = [\"{endpoint}\"], prefix = \"{PREFIX}\", timeout = \"1s\"{extra} }}\n",
        server(&[("workers", "2")])
    )
}

/// A gateway following etcd, with its status and admin addresses.
struct Node {
    p: Proc,
    status: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    fn start(tag: &str, endpoint: &str) -> Node {
        Node::start_with(tag, &node_config(endpoint, ""))
    }

    fn start_with(tag: &str, cfg: &str) -> Node {
        let p = Proc::start(tag, cfg);
        let status = ops::listener(&p.logs, "status");
        let admin = ops::listener(&p.logs, "admin");
        Node { p, status, admin }
    }

    fn get(&self, path: &str) -> u16 {
        match Client::try_connect(self.p.addr) {
            Ok(mut c) => c.get(path).status,
            Err(_) => 0,
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = ops::get(self.status, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(-1.0)
    }

    fn status(&self) -> Value {
        let (_, text) = ops::get(self.status, "/status");
        serde_json::from_str(&text).expect("status JSON")
    }

    fn api(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (code, text) = http(
            self.admin,
            method,
            path,
            &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
            body,
        );
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// What the node serves, object by object: kind -> id -> object (as the admin API shows it).
    fn objects(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for kind in ["routes", "upstreams", "consumers", "global_rules"] {
            let (code, list) = self.api("GET", &format!("/apisix/admin/{kind}"), "");
            assert_eq!(code, 200, "{list}");
            for it in list["list"].as_array().cloned().unwrap_or_default() {
                let key = it["key"].as_str().unwrap_or("").replace("/apisix/", "");
                out.insert(key, it["value"].clone());
            }
        }
        out
    }
}

/// etcd's content under the prefix as the nodes should hold it (the id field set).
fn etcd_objects(etcd: &Etcd) -> BTreeMap<String, Value> {
    let (kvs, _) = etcd.range(&format!("{PREFIX}/"));
    kvs.into_iter()
        .map(|(k, v)| {
            let key = k.trim_start_matches(&format!("{PREFIX}/")).to_string();
            let mut v: Value = serde_json::from_str(&v).expect("test objects are JSON");
            let field = if key.starts_with("routes/") || key.starts_with("upstreams/") {
                "name"
            } else if key.starts_with("consumers/") {
                "username"
            } else {
                "id"
            };
            let id = key.split_once('/').map(|(_, id)| id).unwrap_or("");
            v[field] = json!(id);
            (key, v)
        })
        .collect()
}

fn all_equal_to_etcd(etcd: &Etcd, nodes: &[&Node], limit: Duration) {
    let mut last = String::new();
    let ok = wait_until(limit, || {
        let want = etcd_objects(etcd);
        for (i, n) in nodes.iter().enumerate() {
            let have = n.objects();
            if have != want {
                let diff: Vec<_> = want
                    .keys()
                    .chain(have.keys())
                    .filter(|k| want.get(*k) != have.get(*k))
                    .collect();
                last = format!("node {i} differs from etcd at {diff:?}");
                return false;
            }
        }
        true
    });
    assert!(ok, "{last}");
}

fn route(path: &str, upstream: &str) -> String {
    json!({"paths": [path], "upstream": upstream}).to_string()
}

fn origin() -> Origin {
    Origin::start("etcd", |r| Resp::text(200, r.target.clone()).into())
}

fn seed(etcd: &Etcd, o: &Origin) {
    etcd.put(
        &format!("{PREFIX}/upstreams/o"),
        &json!({"nodes": [{"addr": o.addr.to_string()}]}).to_string(),
    );
    etcd.put(&format!("{PREFIX}/routes/stable"), &route("/stable", "o"));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn three_nodes_serve_what_is_written_to_etcd() {
    let etcd = Etcd::start();
    let o = origin();
    seed(&etcd, &o);
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&format!("etcd-three-{i}"), &etcd.endpoint()))
        .collect();
    for n in &nodes {
        assert_eq!(n.get("/stable"), 200, "{}", n.p.logs.text());
    }

    // 200 changes, each timed from before the write until all three serve it.
    let took = {
        let _cpu = cpu_lock();
        let mut took = Vec::with_capacity(200);
        for i in 0..200 {
            let path = format!("/p{i}");
            let t0 = Instant::now();
            etcd.put(&format!("{PREFIX}/routes/p{i}"), &route(&path, "o"));
            for n in &nodes {
                let seen = time_until(Duration::from_secs(10), || n.get(&path) == 200);
                assert!(
                    seen.is_some(),
                    "route {path} not served:\n{}",
                    n.p.logs.text()
                );
            }
            took.push(t0.elapsed());
        }
        took
    };
    let mut sorted = took.clone();
    sorted.sort();
    let (p50, p99) = (percentile(&sorted, 0.5), percentile(&sorted, 0.99));
    println!(
        "etcd propagation over 200 changes, 3 nodes: p50 {p50:?}, p99 {p99:?}, max {:?}",
        sorted[sorted.len() - 1]
    );
    // A generous bound (the box is shared); the numbers are in perf/RESULTS.md.
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");

    // An invalid object is refused on every node; the rest keeps serving.
    etcd.put(&format!("{PREFIX}/routes/bad"), &route("/bad", "missing"));
    etcd.put(&format!("{PREFIX}/routes/junk"), "{not json");
    for n in &nodes {
        assert!(
            n.p.logs
                .wait_for(
                    |l| l.contains("refused routes/bad"),
                    Duration::from_secs(10)
                )
                .is_some(),
            "{}",
            n.p.logs.text()
        );
        assert!(n
            .p
            .logs
            .wait_for(
                |l| l.contains("refused routes/junk"),
                Duration::from_secs(10)
            )
            .is_some());
        assert!(
            n.metric("ringway_config_source_events_total{result=\"refused\"}") >= 2.0,
            "refusals counted"
        );
        assert_eq!(n.get("/bad"), 404);
        assert_eq!(n.get("/stable"), 200);
        assert_eq!(n.get("/p7"), 200);
    }
    // What it was waiting for arrives: the refused route is taken on every node.
    etcd.put(
        &format!("{PREFIX}/upstreams/missing"),
        &json!({"nodes": [{"addr": o.addr.to_string()}]}).to_string(),
    );
    etcd.delete(&format!("{PREFIX}/routes/junk"));
    for n in &nodes {
        assert!(wait_until(Duration::from_secs(10), || n.get("/bad") == 200));
        let st = n.status();
        let src = &st["config_source"];
        assert_eq!(src["kind"], "etcd", "{st}");
        assert_eq!(src["watch"], "watching", "{st}");
        assert!(src["revision"].as_i64() > Some(200), "{st}");
        assert!(
            src["seconds_since_last_event"].as_f64() < Some(60.0),
            "{st}"
        );
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    all_equal_to_etcd(&etcd, &refs, Duration::from_secs(10));
}

#[test]
fn admin_writes_go_through_etcd_with_compare_and_swap() {
    let etcd = Etcd::start();
    let o = origin();
    seed(&etcd, &o);
    let a = Node::start("etcd-admin-a", &etcd.endpoint());
    let b = Node::start("etcd-admin-b", &etcd.endpoint());

    let (code, v) = a.api("PUT", "/apisix/admin/routes/r1", &route("/r1", "o"));
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["applied"], true, "{v}");
    let (kvs, _) = etcd.range(&format!("{PREFIX}/routes/r1"));
    assert_eq!(kvs.len(), 1, "written to etcd");
    // The writer answered once it applied it; the other node follows from its watch.
    assert_eq!(a.get("/r1"), 200);
    assert!(wait_until(Duration::from_secs(5), || b.get("/r1") == 200));

    // Compare-and-swap: a change made from a stale read is refused with 409.
    let (_, got) = b.api("GET", "/apisix/admin/routes/r1", "");
    let seen = got["modifiedIndex"].as_i64().expect("modifiedIndex");
    assert!(seen > 0, "{got}");
    let (code, v) = a.api(
        "PATCH",
        &format!("/apisix/admin/routes/r1?mod_revision={seen}"),
        r#"{"paths":["/r1","/r1b"]}"#,
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = b.api(
        "PUT",
        &format!("/apisix/admin/routes/r1?mod_revision={seen}"),
        &route("/r1c", "o"),
    );
    assert_eq!(code, 409, "{v}");
    assert!(wait_until(Duration::from_secs(5), || b.get("/r1b") == 200));
    assert_eq!(b.get("/r1c"), 404);

    // An invalid object is refused before anything is written.
    let (code, v) = a.api("PUT", "/apisix/admin/routes/bad", &route("/bad", "nope"));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error_msg"].as_str().unwrap_or("").contains("nope"),
        "{v}"
    );
    assert!(etcd.range(&format!("{PREFIX}/routes/bad")).0.is_empty());

    // A delete goes through etcd too.
    let (code, v) = b.api("DELETE", "/apisix/admin/routes/r1", "");
    assert_eq!(code, 200, "{v}");
    assert!(wait_until(Duration::from_secs(5), || a.get("/r1") == 404));
    all_equal_to_etcd(&etcd, &[&a, &b], Duration::from_secs(10));
}

/// Requests to `/stable` on every node in a loop until told to stop; counts failures.
fn keep_asking(
    nodes: &[&Node],
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, u64)>> {
    nodes
        .iter()
        .map(|n| {
            let (addr, stop) = (n.p.addr, stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let good = Client::try_connect(addr)
                        .map(|mut c| {
                            c.request(crate::harness::get_req("/stable", "example.com"))
                                .status
                                == 200
                        })
                        .unwrap_or(false);
                    if good {
                        ok += 1
                    } else {
                        failed += 1
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (ok, failed)
            })
        })
        .collect()
}

#[test]
fn compaction_crash_stop_and_partition_end_with_every_node_equal_to_etcd() {
    let mut etcd = Etcd::start();
    let o = origin();
    seed(&etcd, &o);
    let relay = Relay::start(etcd.client);
    let a = Node::start("etcd-faults-a", &etcd.endpoint());
    let b = Node::start("etcd-faults-b", &etcd.endpoint());
    let c = Node::start("etcd-faults-c", &relay.endpoint());
    let nodes = [&a, &b, &c];
    for n in nodes {
        assert_eq!(n.get("/stable"), 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let askers = keep_asking(&nodes, &stop);

    // A stream of writes throughout (failing ones, while etcd is down, are retried).
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        let ep = etcd.client;
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let id = i % 40;
                let key = format!("{PREFIX}/routes/w{id}");
                let body = if i % 5 == 4 {
                    None
                } else {
                    Some(
                        json!({"paths": [format!("/w{id}")], "upstream": "o", "priority": i % 7})
                            .to_string(),
                    )
                };
                if crate::harness::etcd::write_at(ep, &key, body.as_deref()).is_ok() {
                    writes.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let wrote_more = |n: u64| {
        let at = writes.load(Ordering::SeqCst);
        assert!(
            wait_until(Duration::from_secs(30), || writes.load(Ordering::SeqCst)
                >= at + n),
            "writes stalled"
        );
    };
    wrote_more(30);
    // Compaction during the stream: every node's next watch start is gone.
    etcd.compact();
    wrote_more(30);
    etcd.compact();
    // etcd crashes and comes back.
    etcd.kill();
    std::thread::sleep(Duration::from_secs(2));
    etcd.restart();
    wrote_more(30);
    // etcd stops answering (SIGSTOP) for a while.
    etcd.signal("STOP");
    std::thread::sleep(Duration::from_secs(5));
    etcd.signal("CONT");
    wrote_more(30);
    // One node is cut off from etcd for 30 s while the others follow; etcd compacts meanwhile.
    relay.cut();
    wrote_more(50);
    etcd.compact();
    let cut_at = Instant::now();
    while cut_at.elapsed() < Duration::from_secs(28) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = c.status();
    assert_eq!(st["config_source"]["watch"], "disconnected", "{st}");
    relay.heal();
    wrote_more(30);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let mut asked = 0;
    for h in askers {
        let (ok, failed) = h.join().unwrap();
        assert_eq!(
            failed, 0,
            "requests failed during the faults ({ok} succeeded)"
        );
        asked += ok;
    }
    println!(
        "faults: {} writes, {asked} requests, none failed",
        writes.load(Ordering::SeqCst)
    );
    for (i, n) in nodes.iter().enumerate() {
        println!(
            "--- node {i}:\n{}\n{}",
            n.p.logs.text(),
            n.status()["config_source"]
        );
    }
    println!("--- etcd:\n{}", etcd.log());
    all_equal_to_etcd(&etcd, &nodes, Duration::from_secs(30));
    for n in nodes {
        assert!(n.metric("ringway_config_source_resyncs_total") >= 1.0);
        // A node that has just re-read etcd reports "syncing" until its new watch's first
        // answer (a progress report at most one timeout later), so wait for the state, not
        // for one sample of it.
        assert!(
            wait_until(Duration::from_secs(15), || n.status()["config_source"]
                ["watch"]
                == "watching"),
            "{}",
            n.status()["config_source"]
        );
    }
    // The partitioned node caught up by re-reading etcd and applying the difference.
    let log = c.p.logs.text();
    assert!(
        log.contains("re-reading") && log.contains("in sync at revision"),
        "{log}"
    );
}

#[test]
fn a_node_starts_from_its_saved_configuration_when_etcd_is_down() {
    let mut etcd = Etcd::start();
    let o = origin();
    seed(&etcd, &o);
    let cfg = node_config(&etcd.endpoint(), "");
    let mut n = Node::start_with("etcd-saved", &cfg);
    etcd.put(&format!("{PREFIX}/routes/later"), &route("/later", "o"));
    assert!(wait_until(Duration::from_secs(5), || n.get("/later") == 200));
    n.p.stop();
    etcd.kill();

    let n = Node::start_with("etcd-saved", &cfg);
    assert!(
        n.p.logs
            .text()
            .contains("serving the last good configuration saved in"),
        "{}",
        n.p.logs.text()
    );
    assert_eq!(n.get("/later"), 200);
    assert_eq!(n.get("/stable"), 200);
    assert_eq!(n.status()["config_source"]["started_from_saved"], true);
    etcd.restart();
    etcd.put(&format!("{PREFIX}/routes/after"), &route("/after", "o"));
    etcd.delete(&format!("{PREFIX}/routes/later"));
    assert!(
        wait_until(Duration::from_secs(15), || n.get("/after") == 200
            && n.get("/later") == 404),
        "{}",
        n.p.logs.text()
    );
    all_equal_to_etcd(&etcd, &[&n], Duration::from_secs(10));
    let saved = format!("{}.etcd.json", n.p.path.display());
    let _ = std::fs::remove_file(&saved);
    let _ = std::fs::remove_file(format!("{saved}.journal"));
}

#[test]
fn without_etcd_or_a_saved_configuration_start_up_fails_clearly() {
    let dead = format!("http://127.0.0.1:{}", closed_port().port());
    let dir = std::env::temp_dir().join(format!("ringway-etcd-dead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.toml");
    std::fs::write(&path, node_config(&dead, ", startup_wait = \"1s\"")).unwrap();
    let t0 = Instant::now();
    let out = run_cli(
        &["run", "-c", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let all = out.all();
    assert!(
        all.contains("unreachable") && all.contains("no saved configuration"),
        "{all}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_validates_the_etcd_content() {
    let etcd = Etcd::start();
    let o = origin();
    seed(&etcd, &o);
    let dir = std::env::temp_dir().join(format!("ringway-etcd-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.toml");
    std::fs::write(&path, node_config(&etcd.endpoint(), "")).unwrap();
    let check = || {
        run_cli(
            &["check", "-c", path.to_str().unwrap()],
            Duration::from_secs(20),
        )
    };
    let out = check();
    assert!(out.status.success(), "{}", out.all());
    assert!(out.stdout.contains("0 refused"), "{}", out.all());

    etcd.put(&format!("{PREFIX}/routes/bad"), &route("/bad", "nope"));
    etcd.put(&format!("{PREFIX}/plugins/x"), "{}");
    let out = check();
    assert!(!out.status.success(), "{}", out.all());
    let all = out.all();
    assert!(all.contains("routes/bad") && all.contains("nope"), "{all}");
    assert!(all.contains("unknown kind \"plugins\""), "{all}");
    assert!(all.contains("2 refused"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `<prefix>/apis/<id>`: an API with its OpenAPI document inline, written to etcd directly or
/// through the admin API, becomes routes (validated) on every node; a bad document is refused
/// with its pointer on every node and the rest keeps serving; a delete removes its routes.
#[test]
fn apis_in_etcd_become_validated_routes_on_every_node() {
    let etcd = Etcd::start();
    let o = origin();
    seed(&etcd, &o);
    let a = Node::start("etcd-apis-a", &etcd.endpoint());
    let b = Node::start("etcd-apis-b", &etcd.endpoint());
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openapi/oai/petstore.yaml"
    ))
    .expect("petstore document");
    let api = |base: &str, doc: &str| {
        json!({"upstream": "o", "base_path": base, "document": doc}).to_string()
    };
    etcd.put(&format!("{PREFIX}/apis/pets"), &api("/pa", &doc));
    for n in [&a, &b] {
        assert!(wait_until(Duration::from_secs(10), || n.get("/pa/pets/7") == 200));
        assert_eq!(n.get("/pa/pets?limit=x"), 400, "validated");
        assert_eq!(n.get("/pa/owners"), 404);
        assert_eq!(n.get("/stable"), 200);
    }

    // A document with a bad parameter is refused everywhere, naming the pointer.
    let bad = doc.replacen("in: query", "in: body", 1);
    etcd.put(&format!("{PREFIX}/apis/bad"), &api("/pb", &bad));
    for n in [&a, &b] {
        let line =
            n.p.logs
                .wait_for(|l| l.contains("refused apis/bad"), Duration::from_secs(10));
        let line = line.unwrap_or_else(|| panic!("{}", n.p.logs.text()));
        assert!(line.contains("#/paths/~1pets/get/parameters/0"), "{line}");
        assert_eq!(n.get("/pa/pets/7"), 200);
        assert_eq!(n.get("/pb/pets"), 404);
    }
    etcd.delete(&format!("{PREFIX}/apis/bad"));

    // Through the admin API: written to etcd, followed by the other node.
    let (code, v) = a.api("PUT", "/apisix/admin/apis/v2", &api("/v2", &doc));
    assert!(code == 200 || code == 201, "{code} {v}");
    assert_eq!(etcd.range(&format!("{PREFIX}/apis/v2")).0.len(), 1);
    assert_eq!(a.get("/v2/pets"), 200);
    assert!(wait_until(Duration::from_secs(10), || b.get("/v2/pets") == 200));

    let (code, v) = b.api("DELETE", "/apisix/admin/apis/pets", "");
    assert_eq!(code, 200, "{v}");
    for n in [&a, &b] {
        assert!(wait_until(Duration::from_secs(10), || n.get("/pa/pets/7") == 404));
        assert_eq!(n.get("/v2/pets"), 200);
    }
}
