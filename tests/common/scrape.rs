//! `GET /metrics` read with a Prometheus text parser, never by substring.

use prometheus_parse::{Sample, Scrape, Value};

use super::TestServer;

/// Every sample of one scrape; fails the test on a bad status, content type or format.
pub async fn scrape(server: &TestServer) -> Vec<Sample> {
    let (status, headers, body) = server.request_raw("GET", "/metrics", Vec::new(), &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(body.to_vec()).expect("UTF-8 body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples
}

/// The value of the counter or gauge `name` (with `label`, if given).
pub fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    match sample(samples, name, label).value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

/// The sample `name` (with `label`, if given).
pub fn sample<'a>(samples: &'a [Sample], name: &str, label: Option<(&str, &str)>) -> &'a Sample {
    samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
}
