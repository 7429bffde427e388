//! Watches as the real server streams them: history after a resourceVersion (410 as an ERROR
//! event when it is too old), the current state as ADDED without one, selectors, bookmarks about
//! once a minute and two seconds before the timeout, and per-client faults on every event.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::kinds::Kind;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiFail, Body};
use super::store::{too_large, Change, Shared};
use super::table::Render;

/// How often a watcher that asked for them gets a bookmark (the watch cache's frequency).
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// ... and how long before its timeout it gets the last one.
const BOOKMARK_BEFORE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a watch from a resourceVersion the store has not reached waits for it.
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);

/// The zero object of a kind, as a bookmark carries it (the server's `newFunc()`).
fn bookmark_object(kind: Kind, rv: u64) -> Value {
    let mut o = json!({"kind": kind.kind(), "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null}});
    match kind {
        Kind::Lease => o["spec"] = json!({}),
        Kind::Event => {
            for (k, v) in [
                ("involvedObject", json!({})),
                ("source", json!({})),
                ("firstTimestamp", Value::Null),
                ("lastTimestamp", Value::Null),
                ("eventTime", Value::Null),
                ("reportingComponent", json!("")),
                ("reportingInstance", json!("")),
            ] {
                o[k] = v;
            }
        }
        _ => {
            o["spec"] = json!({});
            o["status"] = json!({});
        }
    }
    o
}

pub struct WatchRequest {
    pub kind: Kind,
    pub namespace: String,
    pub client: String,
    pub render: Render,
}

pub async fn watch(
    shared: Arc<Shared>,
    stop: CancellationToken,
    w: WatchRequest,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiFail> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(w.kind, q.get("fieldSelector").map_or("", String::as_str))?;
    let since: Option<u64> = match q
        .get("resourceVersion")
        .filter(|s| !s.is_empty() && *s != "0")
    {
        None => None,
        Some(s) => Some(s.parse().map_err(|_| {
            ApiFail::new(400, "BadRequest", format!("invalid resource version: {s}"))
        })?),
    };
    if let Some(n) = since {
        let waited = tokio::time::timeout(TOO_LARGE_WAIT, async {
            while shared.store.lock().unwrap().rv < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if waited.is_err() {
            return Err(too_large(n, shared.store.lock().unwrap().rv));
        }
    }
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut changes = shared.changes.subscribe();
    let WatchRequest {
        kind,
        namespace,
        client,
        mut render,
    } = w;

    // Backlog: history after `since`, or the current objects as ADDED.
    let mut backlog = Vec::new();
    let mut expired = None;
    let mut last_rv;
    {
        let st = shared.store.lock().unwrap();
        last_rv = st.rv;
        match since {
            Some(rv) if rv < st.oldest() => {
                expired = Some(format!("too old resource version: {rv} ({})", st.oldest()))
            }
            Some(rv) => backlog.extend(st.history.iter().filter(|c| c.rv > rv).cloned()),
            None => {
                for ((k, ns, n), v) in st.objects.iter().filter(|((k, _, _), _)| *k == kind) {
                    backlog.push(Change {
                        rv: 0,
                        kind: *k,
                        namespace: ns.clone(),
                        name: n.clone(),
                        event: "ADDED",
                        object: v.clone(),
                        previous: None,
                    });
                }
            }
        }
    }
    let matches = move |c: &Change| -> bool {
        c.kind == kind
            && (namespace.is_empty() || c.namespace == namespace)
            && labels.matches(&c.object)
            && fields.matches(&c.object)
    };
    let line = |event: &str, object: &Value| -> Bytes {
        let mut v = serde_json::to_vec(&json!({"type": event, "object": object})).expect("JSON");
        v.push(b'\n');
        Bytes::from(v)
    };
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let send = |b: Bytes| {
            let (tx, shared, client) = (tx.clone(), shared.clone(), client.clone());
            async move {
                shared.wait_unpartitioned(&client).await;
                let lat = shared.client_faults(&client).latency_ms;
                if lat > 0 {
                    tokio::time::sleep(Duration::from_millis(lat)).await;
                }
                tx.send(b).await.is_ok()
            }
        };
        if let Some(message) = expired {
            let f = ApiFail::new(410, "Expired", message);
            let _ = send(line("ERROR", &f.status())).await;
            return;
        }
        for c in backlog.iter().filter(|c| matches(c)) {
            if !send(line(c.event, &render.row(&c.object))).await {
                return;
            }
        }
        let next_bookmark = |now: tokio::time::Instant| {
            let beat = now + BOOKMARK_EVERY;
            match deadline {
                Some(d)
                    if d.checked_sub(BOOKMARK_BEFORE_TIMEOUT)
                        .is_some_and(|p| p < beat) =>
                {
                    d.checked_sub(BOOKMARK_BEFORE_TIMEOUT).filter(|p| *p > now)
                }
                _ => Some(beat),
            }
        };
        let mut bookmark_at = next_bookmark(tokio::time::Instant::now());
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let until_bookmark = async {
                match bookmark_at {
                    Some(t) if bookmarks => tokio::time::sleep_until(t).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = until_deadline => return,
                _ = until_bookmark => {
                    if !send(line("BOOKMARK", &bookmark_object(kind, last_rv))).await { return; }
                    bookmark_at = next_bookmark(tokio::time::Instant::now());
                }
                c = changes.recv() => match c {
                    Ok(c) => {
                        if c.rv <= last_rv && since.is_some() { continue; }
                        last_rv = last_rv.max(c.rv);
                        if matches(&c) && !send(line(c.event, &render.row(&c.object))).await { return; }
                    }
                    // The watcher fell too far behind: tell the client to relist, as the server does.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let f = ApiFail::new(410, "Expired", format!("too old resource version: {last_rv} ({last_rv})"));
                        let _ = send(line("ERROR", &f.status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response parts"))
}
