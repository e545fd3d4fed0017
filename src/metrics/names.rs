//! Every metric name ringway exposes, in one place, so dashboards and alerts have one list to follow.
//! Names only: counting lives in `mod.rs`, exposition in `expose.rs`.

pub const BUILD_INFO: &str = "ringway_build_info";
pub const CONFIG_GENERATION: &str = "ringway_config_generation";
pub const CONFIG_RELOADS: &str = "ringway_config_reloads_total";
pub const SOURCE_REVISION: &str = "ringway_config_source_revision";
pub const SOURCE_WATCH_STATE: &str = "ringway_config_source_watch_state";
pub const SOURCE_EVENTS: &str = "ringway_config_source_events_total";
pub const SOURCE_RESYNCS: &str = "ringway_config_source_resyncs_total";
pub const SOURCE_LAST_EVENT_AGE: &str = "ringway_config_source_last_event_age_seconds";
pub const SHARDS: &str = "ringway_shards";
pub const SHARDS_REPORTING: &str = "ringway_shards_reporting";
pub const CONNECTIONS_ACCEPTED: &str = "ringway_connections_accepted_total";
pub const CONNECTIONS_ACTIVE: &str = "ringway_connections_active";
pub const SHARD_REQUESTS: &str = "ringway_shard_requests_total";
pub const GATEWAY_ERRORS: &str = "ringway_gateway_errors_total";
pub const HTTP_REQUESTS: &str = "ringway_http_requests_total";
pub const HTTP_DURATION: &str = "ringway_http_request_duration_seconds";
pub const UPSTREAM_RESPONSES: &str = "ringway_upstream_responses_total";
pub const UPSTREAM_NODE_UP: &str = "ringway_upstream_node_up";
pub const ACCESSLOG_DROPPED: &str = "ringway_accesslog_lines_dropped_total";
pub const ACCESSLOG_LINES: &str = "ringway_accesslog_lines_total";
pub const ACTIVE_CHECKS: &str = "ringway_health_checks_total";
pub const RATE_LIMITED: &str = "ringway_rate_limited_total";
pub const API_INVALID: &str = "ringway_api_invalid_requests_total";
pub const API_DEPRECATED: &str = "ringway_api_deprecated_requests_total";
pub const OIDC_PROVIDER_REQUESTS: &str = "ringway_oidc_provider_requests_total";
pub const CACHE_RESPONSES: &str = "ringway_cache_responses_total";
pub const LOGGER_SENT: &str = "ringway_logger_entries_sent_total";
pub const LOGGER_DROPPED: &str = "ringway_logger_entries_dropped_total";
pub const LOGGER_FAILURES: &str = "ringway_logger_send_failures_total";
pub const FLEET_STATE: &str = "ringway_fleet_store_state";
pub const FLEET_SYNCS: &str = "ringway_fleet_syncs_total";
pub const FLEET_ERRORS: &str = "ringway_fleet_errors_total";
pub const FLEET_CHANGES: &str = "ringway_fleet_state_changes_total";
pub const FLEET_COMMANDS: &str = "ringway_fleet_redis_commands_total";
pub const FLEET_LATENCY_SUM: &str = "ringway_fleet_sync_seconds_sum";
pub const FLEET_LATENCY_LAST: &str = "ringway_fleet_sync_seconds_last";
pub const FLEET_KEYS: &str = "ringway_fleet_keys";
pub const TIER_STATE: &str = "ringway_cache_tier_state";
pub const TIER_LOOKUPS: &str = "ringway_cache_tier_lookups_total";
pub const TIER_HITS: &str = "ringway_cache_tier_hits_total";
pub const TIER_ERRORS: &str = "ringway_cache_tier_errors_total";
pub const TIER_WRITES: &str = "ringway_cache_tier_writes_total";
pub const TIER_WRITE_ERRORS: &str = "ringway_cache_tier_write_errors_total";
pub const TIER_DROPPED: &str = "ringway_cache_tier_writes_dropped_total";
pub const TIER_PURGES_SENT: &str = "ringway_cache_tier_purges_sent_total";
pub const TIER_PURGES_HEARD: &str = "ringway_cache_tier_purges_heard_total";
pub const TIER_CHANGES: &str = "ringway_cache_tier_state_changes_total";

/// Route label for requests that matched no route (404s, malformed heads).
pub const UNROUTED: &str = "";
