//! Request → expected answer pairs (`tests/fixtures/kube-conformance.json`) that pin what the API
//! emulator must answer as a real kube-apiserver does. On `cargo test` they run against the
//! emulator; with `KUBECONFIG` set, unchanged against that cluster (in a namespace of their own,
//! deleted at the end), which is how the file is kept true.
//!
//! A case: `method`, `path`, optional `query`, `body`, `content_type`, `accept`, `user_agent`,
//! `min_minor` (skipped on an older server); `save` names values of the answer for later cases
//! (`{rv}`); `expect` has `status`, and checks by JSON pointer: `json` (equal), `contains`
//! (substring), `type` (string/number), `len` (array length), `has` (an array element that
//! contains the given fields), `absent`, `text` (the raw body). A watch's body is read as
//! `{"lines": [...]}`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    vars.iter().fold(text.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

/// `want` is contained in `have`: every field of an object, equal scalars.
fn subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| {
            h.get(k).is_some_and(|hv| subset(v, hv))
                || (v.is_null() && h.get(k).is_some_and(Value::is_null))
        }),
        _ => want == have,
    }
}

async fn send(
    client: &kube::Client,
    case: &Value,
    vars: &HashMap<String, String>,
) -> (u16, String) {
    let method = case["method"].as_str().unwrap();
    let mut uri = substitute(case["path"].as_str().unwrap(), vars);
    if let Some(q) = case["query"].as_object() {
        let parts: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(&substitute(v.as_str().unwrap(), vars))))
            .collect();
        uri = format!("{uri}?{}", parts.join("&"));
    }
    let mut req = hyper::Request::builder().method(method).uri(uri);
    let ctype = case["content_type"].as_str().unwrap_or("application/json");
    req = req.header("content-type", ctype);
    req = req.header(
        "accept",
        case["accept"].as_str().unwrap_or("application/json"),
    );
    if let Some(ua) = case["user_agent"].as_str() {
        req = req.header("user-agent", ua);
    }
    let body = if case["body"].is_null() {
        Vec::new()
    } else {
        substitute(&case["body"].to_string(), vars).into_bytes()
    };
    let resp = client
        .send(req.body(kube::client::Body::from(body)).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn check(case: &Value, status: u16, text: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let e = &case["expect"];
    let mut errs = Vec::new();
    if e["status"].as_u64() != Some(u64::from(status)) {
        errs.push(format!("status {status}, expected {}", e["status"]));
    }
    if let Some(t) = e["text"].as_str() {
        if text.trim() != t {
            errs.push(format!("body {text:?}, expected {t:?}"));
        }
    }
    let doc: Value = if case["query"]["watch"] == "true" && status == 200 {
        let lines: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect();
        json!({ "lines": lines })
    } else {
        serde_json::from_str(text).unwrap_or(Value::Null)
    };
    let at = |p: &str| doc.pointer(p);
    for (p, want) in e["json"].as_object().into_iter().flatten() {
        let want: Value = serde_json::from_str(&substitute(&want.to_string(), vars)).unwrap();
        if at(p) != Some(&want) {
            errs.push(format!("{p} = {:?}, expected {want}", at(p)));
        }
    }
    for (p, want) in e["contains"].as_object().into_iter().flatten() {
        let want = substitute(want.as_str().unwrap(), vars);
        if !at(p)
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains(&want))
        {
            errs.push(format!(
                "{p} = {:?}, expected it to contain {want:?}",
                at(p)
            ));
        }
    }
    for (p, ty) in e["type"].as_object().into_iter().flatten() {
        let ok = match ty.as_str().unwrap() {
            "string" => at(p).is_some_and(Value::is_string),
            "number" => at(p).is_some_and(Value::is_number),
            other => panic!("unknown type {other}"),
        };
        if !ok {
            errs.push(format!("{p} = {:?}, expected a {ty}", at(p)));
        }
    }
    for (p, n) in e["len"].as_object().into_iter().flatten() {
        let len = at(p).and_then(Value::as_array).map(Vec::len);
        if len != n.as_u64().map(|n| n as usize) {
            errs.push(format!("{p} has {len:?} elements, expected {n}"));
        }
    }
    for (p, want) in e["has"].as_object().into_iter().flatten() {
        let want: Value = serde_json::from_str(&substitute(&want.to_string(), vars)).unwrap();
        if !at(p)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| subset(&want, x)))
        {
            errs.push(format!("{p} has no element like {want}: {:?}", at(p)));
        }
    }
    for p in e["absent"].as_array().into_iter().flatten() {
        if let Some(v) = at(p.as_str().unwrap()) {
            errs.push(format!("{p} = {v}, expected it absent"));
        }
    }
    if !errs.is_empty() {
        errs.push(format!(
            "answer: {}",
            text.chars().take(2000).collect::<String>()
        ));
    }
    errs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_answers_as_a_real_server_does() {
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/kube-conformance.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let dir = tempfile::tempdir().unwrap();
    let (_emu, kubeconfig) = match std::env::var_os("KUBECONFIG") {
        Some(p) => (None, std::path::PathBuf::from(p)),
        None => {
            let emu = volfence_kube_emulator::Emulator::start("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let p = dir.path().join("kubeconfig");
            std::fs::write(&p, emu.kubeconfig("conformance")).unwrap();
            (Some(emu), p)
        }
    };
    let client = volfence::cluster::client(&volfence::config::KubernetesSettings {
        kubeconfig: Some(kubeconfig),
        request_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let version: Value = client
        .request(hyper::Request::get("/version").body(Vec::new()).unwrap())
        .await
        .unwrap();
    let minor: u64 = version["minor"]
        .as_str()
        .unwrap_or("0")
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0);
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 100_000
    );
    let mut vars: HashMap<String, String> = HashMap::from([
        ("ns".to_string(), format!("volfence-conf-{unique}")),
        ("ns2".to_string(), format!("volfence-absent-{unique}")),
        ("i129".to_string(), "i".repeat(129)),
    ]);
    let (mut failures, mut ran) = (Vec::new(), 0);
    for case in &cases {
        if case["min_minor"].as_u64().is_some_and(|m| minor < m) {
            eprintln!("skipped on a v1.{minor} server: {}", case["name"]);
            continue;
        }
        let t0 = std::time::Instant::now();
        let (status, text) = send(&client, case, &vars).await;
        if t0.elapsed() > Duration::from_secs(6) {
            eprintln!("{}: {:?}", case["name"], t0.elapsed());
        }
        ran += 1;
        let errs = check(case, status, &text, &vars);
        if !errs.is_empty() {
            failures.push(format!("{}:\n  {}", case["name"], errs.join("\n  ")));
        }
        if let (Ok(doc), Some(save)) = (
            serde_json::from_str::<Value>(&text),
            case["save"].as_object(),
        ) {
            for (var, p) in save {
                if let Some(v) = doc.pointer(p.as_str().unwrap()).and_then(Value::as_str) {
                    vars.insert(var.clone(), v.to_string());
                    if var == "rv" {
                        let big = v.parse::<u64>().unwrap_or(0) + 1_000_000_000;
                        vars.insert("big".into(), big.to_string());
                    }
                }
            }
        }
    }
    eprintln!("conformance: {ran} cases run, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {ran} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
