//! The metrics endpoint: the exposition of fixture views against a golden file, every line
//! checked against the text format 0.0.4, and the HTTP server on loopback.
//!
//! `tests/metrics/{stats,services,vrrp,sync}.json` are replies of the control socket's
//! commands of those names; `expected.prom` is their rendering. Run with `BLESS=1` to rewrite
//! it after a deliberate change, then review the diff.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use director::metrics::{self, MetricsInput};
use serde_json::Value;

const DIR: &str = "tests/metrics";

/// A fixture, held to its view: it must read into the view and write back unchanged, so it
/// is an answer the daemon can give.
fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{DIR}/{name}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let data: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let back = director::api::round_trip(name, &data).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(
        back, data,
        "{path} has keys its view does not (left: the view, right: the fixture)"
    );
    serde_json::from_value(data).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn input() -> MetricsInput {
    MetricsInput {
        stats: fixture("stats"),
        services: fixture("services"),
        vrrp: fixture("vrrp"),
        sync: fixture("sync"),
    }
}

#[test]
fn exposition_matches_the_golden_file() {
    let got = metrics::render(&input());
    let path = format!("{DIR}/expected.prom");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &got).expect("write expected.prom");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("tests/metrics/expected.prom");
    if got != expected {
        let diff: Vec<String> = got
            .lines()
            .zip(expected.lines())
            .filter(|(g, e)| g != e)
            .take(10)
            .map(|(g, e)| format!("- {e}\n+ {g}"))
            .collect();
        panic!(
            "rendering differs from {path} ({} vs {} lines); first differences:\n{}",
            got.lines().count(),
            expected.lines().count(),
            diff.join("\n")
        );
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Parse `{a="x",b="y"}` (after the metric name); returns the labels, unescaped, and the rest.
type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((Vec::new(), s));
    };
    let mut labels = Vec::new();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("raw line feed in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by ,".into());
        }
    }
}

/// Checks an exposition against the text format 0.0.4 as Prometheus reads it: HELP and TYPE
/// once per family and before its samples, families not interleaved, valid names, labels and
/// values, no series twice; counters end in `_total` and never go negative.
fn check_text_format(text: &str) -> Result<usize, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut samples = 0;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("does not end in a line feed".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        let mut switch_to = |name: &str| -> Result<(), String> {
            if current.as_deref() != Some(name) {
                if finished.contains(name) {
                    return Err(at(format!("family {name} is interleaved with another")));
                }
                if let Some(c) = current.take() {
                    finished.insert(c);
                }
                current = Some(name.to_string());
            }
            Ok(())
        };
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !is_metric_name(name) || rest.len() <= name.len() + 1 {
                return Err(at("HELP needs a name and a text".into()));
            }
            switch_to(name)?;
            if !helps.insert(name.to_string()) {
                return Err(at("second HELP".into()));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE needs a type".into()))?;
            if !is_metric_name(name) {
                return Err(at("bad name".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            switch_to(name)?;
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(at("second TYPE".into()));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at("counter not named *_total".into()));
            }
        } else if line.starts_with('#') {
            continue;
        } else {
            let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return Err(at("bad metric name".into()));
            }
            let kind = types
                .get(name)
                .ok_or_else(|| at("sample before its TYPE".into()))?
                .clone();
            if !helps.contains(name) {
                return Err(at("sample without HELP".into()));
            }
            switch_to(name)?;
            let (mut labels, rest) = parse_labels(&line[name_end..]).map_err(at)?;
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| at("no space before the value".into()))?;
            let mut fields = value.split(' ');
            let value = fields.next().unwrap_or("");
            let v: f64 = match value {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|_| at(format!("bad value {v:?}")))?,
            };
            if let Some(ts) = fields.next() {
                ts.parse::<i64>()
                    .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
            }
            if fields.next().is_some() {
                return Err(at("trailing fields".into()));
            }
            if kind == "counter" && (v.is_nan() || v < 0.0) {
                return Err(at("negative counter".into()));
            }
            let mut names = HashSet::new();
            for (l, _) in &labels {
                if !names.insert(l.clone()) {
                    return Err(at(format!("label {l} twice")));
                }
            }
            labels.sort();
            if !series.insert(format!("{name}{labels:?}")) {
                return Err(at("duplicate series".into()));
            }
            samples += 1;
        }
    }
    if let Some(missing) = types.keys().find(|t| !helps.contains(*t)) {
        return Err(format!("{missing} has TYPE but no HELP"));
    }
    Ok(samples)
}

#[test]
fn exposition_is_valid_text_format() {
    let text = metrics::render(&input());
    let samples = check_text_format(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(samples > 150, "only {samples} samples");
    // The one-hot VRRP state: exactly one 1 per instance.
    let master: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("director_vrrp_state{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(
        master,
        [
            "director_vrrp_state{instance=\"ext\",vrid=\"51\",state=\"MASTER\"} 1",
            "director_vrrp_state{instance=\"int-gw\",vrid=\"52\",state=\"BACKUP\"} 1",
        ]
    );
    // Base units: milliseconds become seconds.
    assert!(text.contains("\ndirector_sync_lag_seconds 0.000412\n"));
    assert!(text.contains(
        "\ndirector_service_check_interval_seconds{service=\"web\",kind=\"http\"} 0.2\n"
    ));
}

#[test]
fn the_checker_catches_what_it_should() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert_eq!(check_text_format(ok), Ok(1));
    for bad in [
        "a_total 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1\na_total 2\n",
        "# HELP a A.\n# TYPE a counter\na 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total -1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"\\q\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} one\n",
        "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\nb 1\na 1\n",
    ] {
        assert!(check_text_format(bad).is_err(), "accepted {bad:?}");
    }
}

/// Unusual service names and addresses still make valid lines: escaping works end to end.
#[test]
fn odd_label_values_stay_valid() {
    let mut views = input();
    views.services[0].name = "we\"b\\\nx".to_string();
    let text = metrics::render(&views);
    check_text_format(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("service=\"we\\\"b\\\\\\nx\""));
}

// --- the HTTP server ---

fn server() -> metrics::MetricsServer {
    let views = input();
    let source: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || metrics::render(&views));
    metrics::serve("127.0.0.1:0".parse().expect("address"), source).expect("listen on loopback")
}

/// Send `request` and read the whole answer (the server closes after one).
fn exchange(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("send the request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8(answer).expect("UTF-8 answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn http_answers_metrics_404_and_405() {
    let srv = server();
    let addr = srv.local_addr();

    let (head, body) = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: lb-a\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        header(&head, "Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        header(&head, "Content-Length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(body, metrics::render(&input()));

    // A query string is ignored, as Prometheus' own handlers do.
    let (head, _) = exchange(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");

    let (head, body) = exchange(addr, "GET / HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.contains("href=\"/metrics\""), "{body}");

    let (head, _) = exchange(addr, "GET /metricz HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");

    let (head, _) = exchange(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    assert_eq!(header(&head, "Allow"), Some("GET, HEAD"));

    let (head, body) = exchange(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "");

    let (head, _) = exchange(addr, "nonsense\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");

    srv.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after stop()"
    );
}

#[test]
fn a_slow_client_cannot_hold_the_endpoint() {
    let srv = server();
    let addr = srv.local_addr();
    // Half a request line, then nothing.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"GET /met").expect("send");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");

    // A second client is answered all the same (after the slow one's deadline at most).
    let (head, body) = exchange(addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.contains("director_connections 1530\n"));

    // The slow one was cut off: the server closed it without an answer.
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest)
        .expect("closed by the server, not by our 30 s timeout");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // stop() returns while another slow client is connected.
    let mut slow2 = TcpStream::connect(addr).expect("connect");
    slow2.write_all(b"GE").expect("send");
    srv.stop();
    slow2.shutdown(Shutdown::Both).ok();
}
