//! `kubectl get`'s view: a `meta.k8s.io/v1` Table when the request's Accept asks for one
//! (`as=Table`), rows with the object's metadata (includeObject=Metadata, the default), the full
//! object (Object) or none (None); plain objects otherwise.

use serde_json::{json, Value};

use super::events_v1;
use super::kinds::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

/// How responses are shaped for one request.
#[derive(Debug, Clone)]
pub enum Render {
    Plain,
    /// Plain objects of the core storage as `events.k8s.io/v1` serves them.
    EventsV1,
    /// `headers`: column definitions still to send (a watch sends them with its first row only).
    Table {
        kind: Kind,
        include: Include,
        headers: bool,
    },
}

impl Render {
    /// Plain responses through the `events.k8s.io/v1` view (Tables stay as core renders them).
    pub fn events_v1(self) -> Render {
        match self {
            Render::Plain => Render::EventsV1,
            t => t,
        }
    }

    /// From the Accept header and `includeObject`.
    pub fn new(kind: Kind, accept: &str, include: Option<&str>) -> Render {
        let wants_table = accept
            .split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"));
        if !wants_table {
            return Render::Plain;
        }
        let include = match include {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        };
        Render::Table {
            kind,
            include,
            headers: true,
        }
    }

    fn definitions(kind: Kind) -> Vec<Value> {
        kind.columns()
            .iter()
            .map(|(name, ty, priority)| {
                json!({"name": name, "type": ty, "format": if *name == "Name" { "name" } else { "" },
                       "description": "", "priority": priority})
            })
            .collect()
    }

    fn row_of(kind: Kind, include: Include, obj: &Value) -> Value {
        let mut row = json!({"cells": kind.cells(obj)});
        match include {
            Include::None => {}
            Include::Metadata => {
                row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
            }
            Include::Object => row["object"] = obj.clone(),
        }
        row
    }

    fn table(
        kind: Kind,
        include: Include,
        rows: &[&Value],
        rv: &Value,
        headers: bool,
        cont: &Value,
    ) -> Value {
        let mut meta = json!({"resourceVersion": rv});
        if !cont.is_null() {
            meta["continue"] = cont.clone();
        }
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
            "columnDefinitions": if headers { Self::definitions(kind) } else { vec![] },
            "rows": rows.iter().map(|o| Self::row_of(kind, include, o)).collect::<Vec<_>>(),
        })
    }

    /// A LIST response.
    pub fn list(&self, list: Value) -> Value {
        match self {
            Render::Plain => list,
            Render::EventsV1 => {
                let mut list = list;
                if let Some(items) = list["items"].as_array_mut() {
                    for i in items.iter_mut() {
                        *i = events_v1::from_core(i);
                    }
                }
                list["kind"] = json!("EventList");
                list["apiVersion"] = json!(events_v1::API_VERSION);
                list
            }
            Render::Table { kind, include, .. } => {
                let items: Vec<&Value> = list["items"]
                    .as_array()
                    .map(|a| a.iter().collect())
                    .unwrap_or_default();
                Self::table(
                    *kind,
                    *include,
                    &items,
                    &list["metadata"]["resourceVersion"],
                    true,
                    &list["metadata"]["continue"],
                )
            }
        }
    }

    /// A GET (or write) response for one object.
    pub fn one(&self, obj: Value) -> Value {
        match self {
            Render::Plain => obj,
            // A Status (a delete's answer) is not an Event.
            Render::EventsV1 if obj["kind"] == "Event" => events_v1::from_core(&obj),
            Render::EventsV1 => obj,
            Render::Table { kind, include, .. } => Self::table(
                *kind,
                *include,
                &[&obj],
                &obj["metadata"]["resourceVersion"],
                true,
                &Value::Null,
            ),
        }
    }

    /// One watch event's object: a one-row Table, the columns with the first only.
    pub fn row(&mut self, obj: &Value) -> Value {
        match self {
            Render::Plain => obj.clone(),
            Render::EventsV1 if obj["kind"] == "Event" => events_v1::from_core(obj),
            Render::EventsV1 => obj.clone(),
            Render::Table {
                kind,
                include,
                headers,
            } => {
                let t = Self::table(
                    *kind,
                    *include,
                    &[obj],
                    &obj["metadata"]["resourceVersion"],
                    *headers,
                    &Value::Null,
                );
                *headers = false;
                t
            }
        }
    }
}
