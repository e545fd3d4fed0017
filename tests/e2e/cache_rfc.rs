//! proxy-cache's reading of RFC 9111/9110 field values, through the real server and a counting
//! origin (both shards): invalid `Expires` dates mean already stale, `Age` values that are not
//! delta-seconds are ignored, `max-age` takes digits (leading zeros too) but not a quoted or
//! repeated value.

use crate::harness::*;

fn gw(o: &Origin) -> Gateway {
    let cfg = format!(
        "{}{}{}",
        server(&[("workers", &cache_workers(2))]),
        upstream("backend", &[o.addr], ""),
        route("c", &["/*"], "backend", "[routes.plugins.proxy-cache]\n")
    );
    Gateway::start(&cfg)
}

fn get(g: &Gateway, path: &str) -> Response {
    g.client()
        .request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
}

fn status(r: &Response) -> String {
    r.header("X-Cache-Status").unwrap_or("-").to_string()
}

/// Origin whose response to `/N` carries the header line `cases[N]`.
fn origin(cases: &'static [(&'static str, &'static str)]) -> Origin {
    Origin::start("o", move |r| {
        let i: usize = r.path()[1..].parse().unwrap_or(0);
        let (n, v) = cases[i];
        Resp::text(200, "x").header(n, v).into()
    })
}

#[test]
fn invalid_expires_dates_mean_already_stale() {
    const CASES: &[(&str, &str)] = &[
        ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"), // valid: fresh
        ("Expires", "thu, 01 Jan 2099 00:00:00 GMT"),
        ("Expires", "Thu, 01 jan 2099 00:00:00 GMT"),
        ("Expires", "Thu 01 Jan 2099 00:00:00 GMT"),
        ("Expires", "Thu,  01 Jan 2099 00:00:00 GMT"),
        ("Expires", "Thu, 01 Jan 99 00:00:00 GMT"),
        ("Expires", "Thu, 01 Jan 2099 00:00:00 UTC"),
        ("Expires", "0"),
        ("Expires", "Thursday, 01-Jan-2099 00:00:00 GMT"),
    ];
    let o = origin(CASES);
    let g = gw(&o);
    for (i, (_, v)) in CASES.iter().enumerate() {
        let path = format!("/{i}");
        get(&g, &path);
        let want = if i == 0 { "HIT" } else { "MISS" };
        assert_eq!(status(&get(&g, &path)), want, "Expires: {v}");
    }
}

#[test]
fn max_age_digits_only_once_and_unquoted() {
    const CASES: &[(&str, &str)] = &[
        ("Cache-Control", "max-age=0060"),
        ("Cache-Control", "max-age=\"60\""),
        ("Cache-Control", "max-age=60, max-age=60"),
        ("Cache-Control", "max-age=6O"),
        ("Cache-Control", "max-age=-1"),
        ("Cache-Control", "s-maxage=60, max-age=0"),
    ];
    let o = origin(CASES);
    let g = gw(&o);
    for (i, want) in ["HIT", "MISS", "MISS", "MISS", "MISS", "HIT"]
        .iter()
        .enumerate()
    {
        let path = format!("/{i}");
        get(&g, &path);
        assert_eq!(status(&get(&g, &path)), *want, "{}", CASES[i].1);
    }
}

#[test]
fn age_values_that_are_not_delta_seconds_are_ignored() {
    const CASES: &[(&str, &str)] = &[
        ("Age", "30"),
        ("Age", "+30"),
        ("Age", "30.0"),
        ("Age", "-30"),
        ("Age", "30, 40"),
        ("Age", "030"),
    ];
    let o = Origin::start("o", |r| {
        let i: usize = r.path()[1..].parse().unwrap_or(0);
        Resp::text(200, "x")
            .header("Cache-Control", "max-age=100")
            .header("Age", CASES[i].1)
            .into()
    });
    let g = gw(&o);
    for (i, (_, v)) in CASES.iter().enumerate() {
        let path = format!("/{i}");
        get(&g, &path);
        let r = get(&g, &path);
        assert_eq!(status(&r), "HIT", "Age: {v}");
        let age: u64 = r.header("Age").expect("Age on a hit").parse().unwrap();
        let counted = matches!(i, 0 | 5);
        assert_eq!(age >= 30, counted, "Age: {v} gave {age}");
    }
}
