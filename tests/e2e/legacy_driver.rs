//! RINGWAY_TEST_DRIVER, the switch README's "Run the tests" uses to run the proxy-path modules a
//! second time on the legacy (epoll) driver: it must reach the builders' configs and hand-written
//! ones, really change the driver, and README and .ci/run must run that same command.
use crate::harness::*;

use std::path::Path;

fn hand_written(origin: &Origin, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n{server_extra}\n{}{}",
        upstream("backend", &[origin.addr], ""),
        route("r", &["/*"], "backend", "")
    )
}

fn shard_lines(gw: &Gateway, n: usize) -> Vec<String> {
    let lines = gw.stderr.wait_for_n(
        |l| l.contains(" shard ") && l.contains(" started: "),
        n,
        START_TIMEOUT,
    );
    assert_eq!(lines.len(), n, "shard lines:\n{}", gw.logs());
    lines
}

#[test]
fn the_environment_driver_reaches_builder_and_hand_written_configs() {
    let origin = Origin::echo_target("o");
    let built = simple_config(origin.addr, &[("workers", "2")]);
    assert_eq!(
        configured_driver(&built).as_deref(),
        test_driver(),
        "{DRIVER_ENV}={:?} but the builder wrote:\n{built}",
        test_driver()
    );
    for (what, config) in [
        ("builder", built),
        ("hand-written", hand_written(&origin, "")),
    ] {
        let gw = Gateway::start(&config);
        for line in shard_lines(&gw, 2) {
            let want = match test_driver() {
                Some("legacy") => "driver legacy",
                Some("io_uring") => "driver io_uring",
                _ if io_uring_allowed() => "driver io_uring",
                _ => "driver legacy",
            };
            assert!(
                line.contains(want),
                "{what} config, {DRIVER_ENV}={:?}: {line}",
                test_driver()
            );
        }
        assert_eq!(one_shot(gw.addr, get_req("/d", "t")).body_str(), "/d");
    }
}

#[test]
fn the_driver_helper_puts_a_hand_written_config_on_legacy_and_keeps_an_explicit_driver() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&with_default_driver(&hand_written(&origin, ""), "legacy"));
    for line in shard_lines(&gw, 2) {
        assert!(line.contains("driver legacy"), "{line}");
    }
    let mut c = gw.client();
    for i in 0..5 {
        assert_eq!(c.get(&format!("/k/{i}")).body_str(), format!("/k/{i}"));
    }
    // A test that names its driver keeps it.
    let explicit = hand_written(&origin, "driver = \"io_uring\"\n");
    assert_eq!(with_default_driver(&explicit, "legacy"), explicit);
    assert_eq!(configured_driver(&explicit).as_deref(), Some("io_uring"));
    // A config without a [server] header gets the table (ringway check then judges the rest).
    let bare = "[[routes]]\nname = \"r\"\npaths = [\"/*\"]\nupstream = \"u\"\n";
    let added = with_default_driver(bare, "legacy");
    assert!(added.starts_with(bare), "{added}");
    assert_eq!(configured_driver(&added).as_deref(), Some("legacy"));
}

/// README's "Run the tests" command, CI's last line and the modules its legacy run names.
#[test]
fn readme_and_ci_run_one_command_whose_legacy_filters_name_e2e_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
    let readme = read("README.md");
    let block = readme
        .split_once("Run the tests:\n\n```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(cmd, _)| cmd)
        .expect("README.md has a \"Run the tests:\" sh block");
    assert_eq!(block.lines().count(), 1, "one command to copy:\n{block}");
    let ci = read(".ci/run");
    let last = ci
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert_eq!(last, block, ".ci/run must end with README's command");

    let legacy = format!("{DRIVER_ENV}=legacy cargo test --test e2e -- ");
    let (_, filters) = block
        .split_once(&legacy)
        .unwrap_or_else(|| panic!("no `{legacy}...` in {block:?}"));
    let filters: Vec<&str> = filters.split_whitespace().collect();
    assert!(
        filters.contains(&"legacy_driver::"),
        "the legacy run must include this module's checks: {filters:?}"
    );
    for f in &filters {
        let module = f
            .strip_suffix("::")
            .unwrap_or_else(|| panic!("filter {f:?} is not a `module::` prefix"));
        assert!(
            root.join(format!("tests/e2e/{module}.rs")).is_file(),
            "filter {f:?} names no tests/e2e module, so it would run nothing"
        );
    }
}
