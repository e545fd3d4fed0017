//! What the node knows about its configuration source (etcd): revision applied, watch state,
//! event and resync counts, time of the last event. Plain data written by the etcd thread and
//! read by the status thread; nothing here talks to etcd or to shards.

use std::time::Instant;

/// The watch's state, as `ringway_config_source_watch_state{state}` and `/status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchState {
    /// Start-up read or resync under way.
    Syncing,
    /// Watching: events are applied as they come.
    Watching,
    /// etcd unreachable: the last good configuration keeps serving; reconnecting with backoff.
    Disconnected,
}

impl WatchState {
    pub const ALL: [WatchState; 3] = [
        WatchState::Syncing,
        WatchState::Watching,
        WatchState::Disconnected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WatchState::Syncing => "syncing",
            WatchState::Watching => "watching",
            WatchState::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// "etcd".
    pub kind: &'static str,
    /// The etcd revision whose content the node serves (0 before the first read).
    pub revision: i64,
    pub state: WatchState,
    pub events_applied: u64,
    pub events_refused: u64,
    pub resyncs: u64,
    pub last_event: Option<Instant>,
    /// Started from the locally saved configuration because etcd was unreachable.
    pub from_saved: bool,
}

impl SourceInfo {
    pub fn etcd() -> SourceInfo {
        SourceInfo {
            kind: "etcd",
            revision: 0,
            state: WatchState::Syncing,
            events_applied: 0,
            events_refused: 0,
            resyncs: 0,
            last_event: None,
            from_saved: false,
        }
    }
}
