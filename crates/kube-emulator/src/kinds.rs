//! The resources the emulator serves, and what the real server says about them: their
//! discovery entries, the field labels it indexes, and the columns of `kubectl get`.

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Lease,
    Node,
    PersistentVolume,
    PersistentVolumeClaim,
    Event,
    /// Served because `kubectl describe pvc` lists them (for "Used By"); the agent uses none.
    Pod,
}

pub const ALL: [Kind; 7] = [
    Kind::Namespace,
    Kind::Lease,
    Kind::Node,
    Kind::PersistentVolume,
    Kind::PersistentVolumeClaim,
    Kind::Event,
    Kind::Pod,
];

/// The namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

impl Kind {
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Lease => "leases",
            Kind::Node => "nodes",
            Kind::PersistentVolume => "persistentvolumes",
            Kind::PersistentVolumeClaim => "persistentvolumeclaims",
            Kind::Event => "events",
            Kind::Pod => "pods",
        }
    }
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Lease => "lease",
            Kind::Node => "node",
            Kind::PersistentVolume => "persistentvolume",
            Kind::PersistentVolumeClaim => "persistentvolumeclaim",
            Kind::Event => "event",
            Kind::Pod => "pod",
        }
    }
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace => &["ns"],
            Kind::Lease => &[],
            Kind::Node => &["no"],
            Kind::PersistentVolume => &["pv"],
            Kind::PersistentVolumeClaim => &["pvc"],
            Kind::Event => &["ev"],
            Kind::Pod => &["po"],
        }
    }
    pub fn group(self) -> &'static str {
        match self {
            Kind::Lease => "coordination.k8s.io",
            _ => "",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Lease => "coordination.k8s.io/v1",
            _ => "v1",
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Lease => "Lease",
            Kind::Node => "Node",
            Kind::PersistentVolume => "PersistentVolume",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::Event => "Event",
            Kind::Pod => "Pod",
        }
    }
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::Lease | Kind::Event | Kind::PersistentVolumeClaim | Kind::Pod
        )
    }
    /// `leases.coordination.k8s.io`, as in the real server's messages.
    pub fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_string()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }
    /// Served under `/api/v1` (core) or `/apis/<group>/v1`.
    pub fn from_path(core: bool, plural: &str) -> Option<Kind> {
        ALL.into_iter()
            .find(|k| k.group().is_empty() == core && k.plural() == plural)
    }

    /// The field labels the real server can select on (pkg/apis/core/v1/conversion.go for the
    /// kinds that convert their own; metadata.name and metadata.namespace for the others).
    pub fn field_labels(self) -> &'static [&'static str] {
        match self {
            Kind::Event => &[
                "metadata.name",
                "metadata.namespace",
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            Kind::Namespace => &["metadata.name", "status.phase"],
            Kind::Node => &["metadata.name", "spec.unschedulable"],
            Kind::Pod => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            Kind::PersistentVolume | Kind::PersistentVolumeClaim | Kind::Lease => {
                &["metadata.name", "metadata.namespace"]
            }
        }
    }

    /// Whether the kind converts field labels itself (and words an unknown one its own way).
    pub fn converts_field_labels(self) -> bool {
        matches!(self, Kind::Event | Kind::Namespace | Kind::Node | Kind::Pod)
    }

    /// A PUT of a name that does not exist creates it (the strategy's AllowCreateOnUpdate).
    pub fn create_on_update(self) -> bool {
        matches!(self, Kind::Lease | Kind::Event)
    }

    /// The value a field label selects on, as the real server's field set holds it.
    pub fn field_value(self, label: &str, obj: &Value) -> Option<String> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Some(match label {
            l if !self.field_labels().contains(&l) => return None,
            "metadata.name" => s(&obj["metadata"]["name"]),
            "metadata.namespace" => s(&obj["metadata"]["namespace"]),
            "source" => s(&obj["source"]["component"]),
            "spec.unschedulable" => obj["spec"]["unschedulable"]
                .as_bool()
                .unwrap_or(false)
                .to_string(),
            l => {
                let mut v = obj;
                for part in l.split('.') {
                    v = &v[part];
                }
                s(v)
            }
        })
    }

    /// The verbs the emulator serves for the kind, as discovery lists them.
    pub fn verbs(self) -> Vec<&'static str> {
        vec![
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]
    }

    pub fn discovery_entry(self) -> Value {
        json!({
            "name": self.plural(),
            "singularName": self.singular(),
            "namespaced": self.namespaced(),
            "kind": self.kind(),
            "verbs": self.verbs(),
            "shortNames": self.short_names(),
        })
    }

    /// `kubectl get` columns (the server's Table): name, type, priority (1: only with `-o wide`).
    pub fn columns(self) -> &'static [(&'static str, &'static str, u8)] {
        match self {
            Kind::Namespace => &[
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Age", "date", 0),
            ],
            Kind::Lease => &[
                ("Name", "string", 0),
                ("Holder", "string", 0),
                ("Age", "date", 0),
            ],
            Kind::Node => &[
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Age", "date", 0),
            ],
            Kind::Pod => &[
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Age", "date", 0),
            ],
            Kind::PersistentVolume => &[
                ("Name", "string", 0),
                ("Capacity", "string", 0),
                ("Status", "string", 0),
                ("Claim", "string", 0),
                ("Age", "date", 0),
            ],
            Kind::PersistentVolumeClaim => &[
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Volume", "string", 0),
                ("Age", "date", 0),
            ],
            Kind::Event => &[
                ("Last Seen", "string", 0),
                ("Type", "string", 0),
                ("Reason", "string", 0),
                ("Object", "string", 0),
                ("Subobject", "string", 1),
                ("Source", "string", 1),
                ("Message", "string", 0),
                ("First Seen", "string", 1),
                ("Count", "integer", 1),
                ("Name", "string", 1),
            ],
        }
    }

    pub fn cells(self, obj: &Value) -> Vec<Value> {
        let s = |v: &Value| json!(v.as_str().unwrap_or_default());
        let name = s(&obj["metadata"]["name"]);
        let created = json!(age(obj["metadata"]["creationTimestamp"].as_str()));
        match self {
            Kind::Namespace => vec![name, s(&obj["status"]["phase"]), created],
            Kind::Lease => vec![name, s(&obj["spec"]["holderIdentity"]), created],
            Kind::Node => vec![name, json!("Ready"), created],
            Kind::Pod => vec![name, s(&obj["status"]["phase"]), created],
            Kind::PersistentVolume => vec![
                name,
                s(&obj["spec"]["capacity"]["storage"]),
                s(&obj["status"]["phase"]),
                json!(match obj["spec"]["claimRef"]["name"].as_str() {
                    Some(n) => format!(
                        "{}/{n}",
                        obj["spec"]["claimRef"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                    ),
                    None => String::new(),
                }),
                created,
            ],
            Kind::PersistentVolumeClaim => vec![
                name,
                s(&obj["status"]["phase"]),
                s(&obj["spec"]["volumeName"]),
                created,
            ],
            Kind::Event => {
                let first = obj["firstTimestamp"]
                    .as_str()
                    .or(obj["eventTime"].as_str())
                    .or(obj["metadata"]["creationTimestamp"].as_str());
                let last = obj["lastTimestamp"].as_str().or(first);
                let io = &obj["involvedObject"];
                let source = match (
                    obj["source"]["component"].as_str(),
                    obj["source"]["host"].as_str(),
                ) {
                    (Some(c), Some(h)) => format!("{c}, {h}"),
                    (Some(c), None) => c.to_string(),
                    _ => obj["reportingComponent"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                };
                vec![
                    json!(age(last)),
                    s(&obj["type"]),
                    s(&obj["reason"]),
                    json!(format!(
                        "{}/{}",
                        io["kind"].as_str().unwrap_or_default().to_lowercase(),
                        io["name"].as_str().unwrap_or_default()
                    )),
                    s(&io["fieldPath"]),
                    json!(source),
                    s(&obj["message"]),
                    json!(age(first)),
                    json!(obj["count"].as_i64().unwrap_or(1)),
                    name,
                ]
            }
        }
    }
}

/// `kubectl`'s short age: `5s`, `3m`, `2h`, `4d`.
fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(parse_rfc3339) else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let d = (now - t).max(0);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        7200..=172_799 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    }
}

/// Seconds since the epoch of `2026-11-21T22:00:00Z` (fractions ignored).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    // days_from_civil (Howard Hinnant)
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// `GET /api`.
pub fn core_versions(addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
    })
}

/// `GET /api/v1` or `GET /apis/<group>/v1`.
pub fn resource_list(group: &str) -> Value {
    let gv = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    let resources: Vec<Value> = served_in(group)
        .into_iter()
        .map(Kind::discovery_entry)
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// The kinds a group serves: their own, and Events again in `events.k8s.io` (one storage).
pub fn served_in(group: &str) -> Vec<Kind> {
    if group == crate::events_v1::GROUP {
        return vec![Kind::Event];
    }
    ALL.into_iter().filter(|k| k.group() == group).collect()
}

fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = ALL
        .into_iter()
        .map(Kind::group)
        .filter(|g| !g.is_empty())
        .collect();
    g.push(crate::events_v1::GROUP);
    g.dedup();
    g
}

/// `GET /apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let v = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [v], "preferredVersion": v})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The aggregated discovery document (`apidiscovery.k8s.io/v2`) kubectl asks for first: the
/// core group for `/api`, every other group for `/apis`.
pub fn aggregated(core: bool) -> Value {
    let names: Vec<&str> = if core { vec![""] } else { groups() };
    let items: Vec<Value> = names
        .into_iter()
        .map(|g| {
            let resources: Vec<Value> = served_in(g)
                .into_iter()
                .map(|k| {
                    json!({
                        "resource": k.plural(),
                        "responseKind": {"group": g, "version": "v1", "kind": k.kind()},
                        "scope": if k.namespaced() { "Namespaced" } else { "Cluster" },
                        "singularResource": k.singular(),
                        "verbs": k.verbs(),
                        "shortNames": k.short_names(),
                    })
                })
                .collect();
            json!({
                "metadata": {"name": g, "creationTimestamp": null},
                "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-volfence-emulator+", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}
