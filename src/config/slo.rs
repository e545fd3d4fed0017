//! `[apis.slo]` thresholds, checked, and the Prometheus rules `ringway alerts` writes for them:
//! 5-minute recording rules over the gateway's per-API series (`ringway_api_*{api}`) and
//! alerting rules on those. Text only; nothing here runs in the gateway.

use std::fmt::Write;
use std::time::Duration;

use super::raw::{dur, RawSlo};
use super::ConfigError;

#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub latency_p99: Option<Duration>,
    pub error_ratio: Option<f64>,
    pub r#for: Duration,
}

pub(super) fn slo(at: &str, s: &RawSlo) -> Result<Slo, ConfigError> {
    let latency_p99 = match &s.latency_p99 {
        Some(_) => Some(dur(&format!("{at}.latency_p99"), &s.latency_p99, 0)?),
        None => None,
    };
    if latency_p99.is_some_and(|d| d.is_zero()) {
        return Err(ConfigError::new(
            format!("{at}.latency_p99"),
            "must be above 0",
        ));
    }
    if let Some(r) = s.error_ratio {
        if !(r > 0.0 && r < 1.0) {
            return Err(ConfigError::new(
                format!("{at}.error_ratio"),
                format!("expected a fraction between 0 and 1 (0.01 = 1%), got {r}"),
            ));
        }
    }
    if latency_p99.is_none() && s.error_ratio.is_none() {
        return Err(ConfigError::new(
            at,
            "give latency_p99 = \"300ms\" and/or error_ratio = 0.01",
        ));
    }
    Ok(Slo {
        latency_p99,
        error_ratio: s.error_ratio,
        r#for: dur(&format!("{at}.for"), &s.r#for, 300)?,
    })
}

fn prom_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Prometheus rule groups (YAML) for APIs given as (`name@version`, its `[apis.slo]`); `None`
/// when there are none.
pub fn alert_rules<'a>(apis: impl IntoIterator<Item = (String, &'a Slo)>) -> Option<String> {
    let mut o = String::from("# Written by `ringway alerts`: 5-minute rates of the gateway's per-API series,\n# and alerts on the [apis.slo] thresholds.\ngroups:\n");
    let mut any = false;
    for (id, slo) in apis {
        any = true;
        let _ = write!(
            o,
            "  - name: ringway-api-{id}\n    rules:\n\
             \x20     - record: ringway:api_requests:rate5m\n        expr: |\n          sum(rate(ringway_api_requests_total{{api=\"{id}\"}}[5m]))\n        labels:\n          api: \"{id}\"\n\
             \x20     - record: ringway:api_errors:rate5m\n        expr: |\n          sum(rate(ringway_api_errors_total{{api=\"{id}\"}}[5m]))\n        labels:\n          api: \"{id}\"\n\
             \x20     - record: ringway:api_latency_p99:5m\n        expr: |\n          histogram_quantile(0.99, sum by (le) (rate(ringway_api_request_duration_seconds_bucket{{api=\"{id}\"}}[5m])))\n        labels:\n          api: \"{id}\"\n"
        );
        let forr = prom_duration(slo.r#for);
        if let Some(p99) = slo.latency_p99 {
            let secs = p99.as_secs_f64();
            let _ = write!(
                o,
                "      - alert: RingwayApiLatencyP99High\n        expr: ringway:api_latency_p99:5m{{api=\"{id}\"}} > {secs}\n        for: {forr}\n        labels:\n          severity: warning\n          api: \"{id}\"\n        annotations:\n          summary: \"API {id}: p99 latency above its SLO of {}\"\n",
                prom_duration(p99)
            );
        }
        if let Some(r) = slo.error_ratio {
            let _ = write!(
                o,
                "      - alert: RingwayApiErrorRatioHigh\n        expr: ringway:api_errors:rate5m{{api=\"{id}\"}} / ringway:api_requests:rate5m{{api=\"{id}\"}} > {r}\n        for: {forr}\n        labels:\n          severity: warning\n          api: \"{id}\"\n        annotations:\n          summary: \"API {id}: 5xx ratio above its SLO of {r}\"\n"
            );
        }
    }
    any.then_some(o)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rules_read_the_gateways_api_series() {
        let slo = super::Slo {
            latency_p99: Some(std::time::Duration::from_millis(300)),
            error_ratio: None,
            r#for: std::time::Duration::from_secs(300),
        };
        let y = super::alert_rules([("a.b@v1".to_string(), &slo)]).expect("rules");
        assert!(
            y.contains("ringway_api_requests_total{api=\"a.b@v1\"}"),
            "{y}"
        );
        assert!(
            y.contains("ringway_api_request_duration_seconds_bucket{api=\"a.b@v1\"}"),
            "{y}"
        );
        assert!(!y.contains("RingwayApiErrorRatioHigh"), "{y}");
    }
}
