//! Listeners, the pure part: what each kind listens for, and the parameters an event gives
//! the job it starts.
//!
//! A listener's `params` are templates: `{event.NAME}` is replaced by the event's value
//! `NAME`. Which names exist depends on the kind ([`variables`]); a template naming one
//! the kind never has is refused when the listener is defined. A webhook's payload fields
//! are `{event.payload.a.b}`, looked up in the JSON body when it arrives.

use crate::schedule::render;
use crate::ExecState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a listener listens for (the wire's enum).
pub use shoal_wire::ListenerKind;
/// What became of an event, and why (the wire's enums).
pub use shoal_wire::{EventOutcome, EventReason};

/// A job listener: executions of `sandbox`/`job` reaching one of `states`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnJob {
    pub sandbox: String,
    pub job: String,
    pub states: Vec<ExecState>,
}

/// A file listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnFile {
    pub sandbox: String,
    /// A glob relative to the sandbox root.
    pub pattern: String,
    /// `appeared`, `changed`, `vanished`.
    pub events: Vec<String>,
    /// How long a file's size and modification time must hold still before it fires.
    pub settle_ms: u64,
}

/// A cluster listener: `node_joined`, `node_left`, `node_died`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCluster {
    pub events: Vec<String>,
}

pub const FILE_EVENTS: [&str; 3] = ["appeared", "changed", "vanished"];
pub const CLUSTER_EVENTS: [&str; 3] = ["node_joined", "node_left", "node_died"];

/// The event values a kind's templates may use (webhooks also take `payload.*`).
pub fn variables(kind: ListenerKind) -> &'static [&'static str] {
    match kind {
        ListenerKind::Job => &["execution", "sandbox", "job", "state", "exit_code", "node"],
        ListenerKind::File => &["path", "name", "size", "kind", "sandbox"],
        ListenerKind::Webhook => &["delivery", "hook"],
        ListenerKind::Cluster => &["node", "kind", "generation"],
    }
}

/// Job events also offer the finished execution's parameters as `param.NAME`.
fn allowed(kind: ListenerKind, name: &str) -> bool {
    variables(kind).contains(&name)
        || (kind == ListenerKind::Job && name.starts_with("param.") && name.len() > 6)
        || (kind == ListenerKind::Webhook && (name == "payload" || name.starts_with("payload.")))
}

/// Every `{event.NAME}` in `params`, checked against the kind; the error names the first
/// unknown one and lists the known ones.
pub fn check_templates(kind: ListenerKind, params: &BTreeMap<String, String>) -> Result<(), String> {
    for (param, template) in params {
        let bad = unknown_in(kind, template);
        if let Some(v) = bad {
            let known: Vec<String> = variables(kind).iter().map(|n| format!("{{event.{n}}}")).collect();
            let extra = match kind {
                ListenerKind::Job => ", {event.param.NAME}",
                ListenerKind::Webhook => ", {event.payload.FIELD}",
                _ => "",
            };
            return Err(format!(
                "parameter `{param}` uses {{event.{v}}}, which a {} listener does not have; it has {}{extra}",
                kind.as_str(),
                known.join(", ")
            ));
        }
    }
    Ok(())
}

fn unknown_in(kind: ListenerKind, template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(i) = rest.find("{event.") {
        let after = &rest[i + 7..];
        let end = after.find('}')?;
        let name = &after[..end];
        // `{{event.x}}` is a literal, as in every template.
        let escaped = i > 0 && rest[..i].ends_with('{');
        if !escaped && !allowed(kind, name) {
            return Some(name.to_owned());
        }
        rest = &after[end..];
    }
    None
}

/// The parameters for one event. `lookup` answers `payload.*` names (webhooks); a name it
/// does not know is an error naming it, so a webhook missing a field gets a clear answer.
pub fn event_params(
    template: &BTreeMap<String, String>,
    values: &BTreeMap<String, String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, t) in template {
        let missing = std::cell::RefCell::new(None::<String>);
        let v = render(t, &|name| {
            let v = name.strip_prefix("event.")?;
            let found = values.get(v).cloned().or_else(|| lookup(v));
            if found.is_none() {
                missing.borrow_mut().get_or_insert_with(|| v.to_owned());
            }
            found
        });
        if let Some(name) = missing.into_inner() {
            return Err(format!("the event has no value `{name}` for parameter `{k}`"));
        }
        out.insert(k.clone(), v);
    }
    Ok(out)
}

/// A field of a JSON payload by dotted path (`a.b.0`): strings as they are, other values as
/// JSON text.
pub fn payload_field(payload: &serde_json::Value, path: &str) -> Option<String> {
    let mut v = payload;
    if path != "payload" {
        for part in path.strip_prefix("payload.")?.split('.') {
            v = match v {
                serde_json::Value::Object(m) => m.get(part)?,
                serde_json::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
    }
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn templates_are_checked_per_kind() {
        assert!(check_templates(ListenerKind::Job, &map(&[("a", "{event.execution}-{event.param.day}")])).is_ok());
        let e = check_templates(ListenerKind::File, &map(&[("a", "{event.execution}")])).unwrap_err();
        assert!(e.contains("{event.execution}") && e.contains("{event.path}"), "{e}");
        assert!(check_templates(ListenerKind::Webhook, &map(&[("a", "{event.payload.user.id}")])).is_ok());
        assert!(check_templates(ListenerKind::Cluster, &map(&[("a", "{{event.anything}}")])).is_ok());
        // Other placeholders are the job's own business.
        assert!(check_templates(ListenerKind::Cluster, &map(&[("a", "{day}")])).is_ok());
    }

    #[test]
    fn event_params_fill_values_and_name_what_is_missing() {
        let values = map(&[("path", "in/a.csv")]);
        let p = event_params(&map(&[("file", "{event.path}"), ("x", "{{lit}}")]), &values, &|_| None).unwrap();
        assert_eq!(p["file"], "in/a.csv");
        assert_eq!(p["x"], "{{lit}}");
        let body = serde_json::json!({"user": {"id": 7, "name": "ann"}, "tags": ["a", "b"]});
        let lookup = |n: &str| payload_field(&body, n);
        let p = event_params(
            &map(&[("id", "{event.payload.user.id}"), ("t", "{event.payload.tags.1}")]),
            &BTreeMap::new(),
            &lookup,
        )
        .unwrap();
        assert_eq!((p["id"].as_str(), p["t"].as_str()), ("7", "b"));
        let e = event_params(&map(&[("id", "{event.payload.nope}")]), &BTreeMap::new(), &lookup).unwrap_err();
        assert!(e.contains("payload.nope"), "{e}");
    }
}
