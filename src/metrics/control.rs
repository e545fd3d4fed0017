//! Families of the counters that control threads keep process-wide (config source watch, log
//! senders, openid-connect, fleet, OCSP stapling). Reads their counters only; no shard state.

use std::fmt::Write;

use super::names::*;
use super::text::family;

pub(super) fn source_metrics(o: &mut String, s: &super::source::SourceInfo) {
    family(
        o,
        SOURCE_REVISION,
        "gauge",
        "etcd revision whose content this node serves (config_source).",
    );
    let _ = writeln!(o, "{SOURCE_REVISION} {}", s.revision);
    family(
        o,
        SOURCE_WATCH_STATE,
        "gauge",
        "1 for the config source watch's current state (syncing, watching, disconnected).",
    );
    for st in super::source::WatchState::ALL {
        let v = u8::from(st == s.state);
        let _ = writeln!(o, "{SOURCE_WATCH_STATE}{{state=\"{}\"}} {v}", st.name());
    }
    family(
        o,
        SOURCE_EVENTS,
        "counter",
        "Config source objects applied or refused (invalid), from the watch and resyncs.",
    );
    let _ = writeln!(
        o,
        "{SOURCE_EVENTS}{{result=\"applied\"}} {}",
        s.events_applied
    );
    let _ = writeln!(
        o,
        "{SOURCE_EVENTS}{{result=\"refused\"}} {}",
        s.events_refused
    );
    family(
        o,
        SOURCE_RESYNCS,
        "counter",
        "Re-reads of the config source (compaction, reconnect, etcd restart) applied as a difference.",
    );
    let _ = writeln!(o, "{SOURCE_RESYNCS} {}", s.resyncs);
    if let Some(t) = s.last_event {
        family(
            o,
            SOURCE_LAST_EVENT_AGE,
            "gauge",
            "Seconds since the config source last changed an object on this node.",
        );
        let _ = writeln!(
            o,
            "{SOURCE_LAST_EVENT_AGE} {:.3}",
            t.elapsed().as_secs_f64()
        );
    }
}

/// The OCSP stapling thread's fetches and how many certificates carry a fetched staple now.
pub(super) fn ocsp(o: &mut String) {
    let (fetched, failed, stapled) = super::ocsp::counts();
    family(
        o,
        OCSP_FETCHES,
        "counter",
        "OCSP responder fetches for stapling, by result (ok: a usable answer; failed: down, refused or unusable).",
    );
    let _ = writeln!(o, "{OCSP_FETCHES}{{result=\"ok\"}} {fetched}");
    let _ = writeln!(o, "{OCSP_FETCHES}{{result=\"failed\"}} {failed}");
    family(
        o,
        OCSP_STAPLED,
        "gauge",
        "Certificates with ocsp_fetch whose fetched OCSP answer is current and stapled.",
    );
    let _ = writeln!(o, "{OCSP_STAPLED} {stapled}");
}

/// The fleet thread's counters (process-wide, kept by that thread) and exact mode's (per shard).
pub(super) fn fleet(o: &mut String, exact: super::fleet::ExactCounts) {
    let (sum, last) = super::fleet::latency_seconds();
    for (name, kind, help, v) in super::fleet::families(exact) {
        family(o, name, kind, help);
        if name == FLEET_LATENCY_SUM {
            let _ = writeln!(o, "{name} {sum}");
        } else if name == FLEET_LATENCY_LAST {
            let _ = writeln!(o, "{name} {last}");
        } else {
            let _ = writeln!(o, "{name} {v}");
        }
    }
}

/// http-logger / tcp-logger / syslog delivery counters (process-wide, kept by their sender threads).
pub(super) fn loggers(o: &mut String) {
    let counts = super::logship::counts();
    let families = [
        (
            LOGGER_SENT,
            "Log entries delivered to the sink, by logger plugin.",
        ),
        (
            LOGGER_DROPPED,
            "Log entries dropped (buffer full while the sink was down, or retries exhausted).",
        ),
        (
            LOGGER_FAILURES,
            "Failed deliveries of a batch to the sink (each retry counts).",
        ),
    ];
    for (i, (name, help)) in families.iter().enumerate() {
        family(o, name, "counter", help);
        for (plugin, sent, dropped, failed) in counts {
            let v = [sent, dropped, failed][i];
            let _ = writeln!(o, "{name}{{plugin=\"{plugin}\"}} {v}");
        }
    }
}

/// openid-connect's calls to its providers (process-wide, kept by its control threads).
pub(super) fn oidc(o: &mut String) {
    family(
        o,
        OIDC_PROVIDER_REQUESTS,
        "counter",
        "Requests openid-connect sent to OpenID providers, by endpoint and outcome.",
    );
    for (endpoint, ok, failed) in super::oidc::counts() {
        for (outcome, v) in [("ok", ok), ("error", failed)] {
            let _ = writeln!(
                o,
                "{OIDC_PROVIDER_REQUESTS}{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {v}"
            );
        }
    }
}
