//! shoal's wire model: the request, response and error bodies of the HTTP API under
//! `/api/v1`, as serde types.
//!
//! The server's handlers return these types, the client (`shoal-client`) returns them, and the
//! CLI reads their fields; the OpenAPI document served at `/api/v1/openapi.json` is generated
//! from them (their doc comments are its descriptions). A field is spelled once, here.
//!
//! Times are RFC 3339 strings in UTC with milliseconds (`2026-12-01T10:00:00.000Z`), except
//! where a field says it is in another zone. Ids are UUIDv7 strings, so they sort by creation.

/// The names of an enum whose values the store keeps as text and the API sends: `ALL`,
/// `as_str` (the serde name, spelled again so that it is a `&'static str`; a test holds the
/// two equal), `parse`, `Display`, and comparison with a name.
macro_rules! names {
    ($t:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $t {
            pub const ALL: [$t; [$($name),+].len()] = [$($t::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($t::$variant => $name),+ }
            }

            pub fn parse(s: &str) -> Option<$t> {
                match s { $($name => Some($t::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

/// A schedule's or a listener's body, `request` (`ScheduleRequest`, `ListenerRequest`) or
/// `response` (`Schedule`, `Listener`), whose fields written bare (`name,`) are the ones both
/// kinds have: the table below gives each its type and its serde and schema attributes, so they
/// are spelled once; the struct gives each its place and its doc comment (which says what the
/// field means for that kind). Other fields are written as in any struct. In a request, every
/// field is optional, may be left out or `null`, and is not sent when `None`: the macro puts
/// `#[serde(default, skip_serializing_if = "Option::is_none")]` on each.
///
/// A macro rather than a shared struct under `#[serde(flatten)]`: serde does not support
/// `flatten` beside the requests' `deny_unknown_fields`, and it would turn the OpenAPI schemas
/// into `allOf`s.
macro_rules! trigger_struct {
    ($body:ident $(#[$attr:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        trigger_struct!(@fields $body [$(#[$attr])* pub struct $name] [] $($fields)*);
    };
    // Reads the fields one by one into `[name: type, ...]`, each with its attributes; a bare
    // one through the table.
    (@fields $body:ident $head:tt [$($out:tt)*] $(#[$m:meta])* $field:ident, $($rest:tt)*) => {
        trigger_struct!(@shared $body $field {$body $head [$($out)* $(#[$m])*] $($rest)*});
    };
    (@fields $body:ident $head:tt [$($out:tt)*] $(#[$m:meta])* pub $field:ident: $t:ty, $($rest:tt)*) => {
        trigger_struct!(@fields $body $head [$($out)* $(#[$m])* $field: $t,] $($rest)*);
    };
    (@fields request [$($head:tt)*] [$($(#[$m:meta])* $field:ident: $t:ty,)*]) => {
        $($head)* { $($(#[$m])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $field: $t,)* }
    };
    (@fields response [$($head:tt)*] [$($(#[$m:meta])* $field:ident: $t:ty,)*]) => {
        $($head)* { $($(#[$m])* pub $field: $t,)* }
    };
    // The table of the fields both kinds have: (body, field) => attributes, name and type.
    (@shared request name $k:tt) => {
        trigger_struct!(@put $k #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")] name: Option<String>);
    };
    (@shared request sandbox $k:tt) => { trigger_struct!(@put $k sandbox: Option<String>); };
    (@shared request job $k:tt) => {
        trigger_struct!(@put $k #[schema(example = "jobs/report.toml")] job: Option<String>);
    };
    (@shared request params $k:tt) => {
        trigger_struct!(@put $k
            #[schema(value_type = Option<BTreeMap<String, crate::ParamValue>>)] params: Option<crate::ParamValues>);
    };
    (@shared request enabled $k:tt) => { trigger_struct!(@put $k enabled: Option<bool>); };
    (@shared response id $k:tt) => { trigger_struct!(@put $k #[schema(format = "uuid")] id: String); };
    (@shared response name $k:tt) => { trigger_struct!(@put $k name: String); };
    (@shared response sandbox $k:tt) => { trigger_struct!(@put $k sandbox: String); };
    (@shared response job $k:tt) => { trigger_struct!(@put $k job: String); };
    (@shared response params $k:tt) => { trigger_struct!(@put $k params: BTreeMap<String, String>); };
    (@shared response enabled $k:tt) => { trigger_struct!(@put $k enabled: bool); };
    (@shared response owner $k:tt) => { trigger_struct!(@put $k owner: Option<String>); };
    (@shared response created_at $k:tt) => {
        trigger_struct!(@put $k #[schema(format = DateTime)] created_at: String);
    };
    (@shared response updated_at $k:tt) => {
        trigger_struct!(@put $k #[schema(format = DateTime)] updated_at: String);
    };
    (@shared $body:ident $field:ident $k:tt) => {
        compile_error!(concat!("`", stringify!($field), "` is not in every ", stringify!($body), ": give its type"));
    };
    // Puts a field from the table after its doc comment and goes on reading.
    (@put {$body:ident $head:tt [$($out:tt)*] $($rest:tt)*} $($field:tt)*) => {
        trigger_struct!(@fields $body $head [$($out)* $($field)*,] $($rest)*);
    };
}

mod audit;
mod auth;
mod error;
mod executions;
mod listeners;
mod nodes;
mod position;
mod sandboxes;
mod schedules;
mod secrets;

pub use audit::*;
pub use auth::*;
pub use error::*;
pub use executions::*;
pub use listeners::*;
pub use nodes::*;
pub use position::Lsn;
pub use sandboxes::*;
pub use schedules::*;
pub use secrets::*;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A job parameter's value in a request: strings are taken as they are; numbers and booleans
/// are turned into strings. Anything else is refused (422 `invalid_parameter`).
pub type ParamValues = std::collections::BTreeMap<String, serde_json::Value>;

/// `GET /health/live`: the process answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Live {
    /// Always `live`.
    #[schema(value_type = String, pattern = "^live$")]
    pub status: String,
}

/// `GET /health/ready`: the node takes traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(value_type = String, pattern = "^ready$")]
    pub status: String,
    /// This node's id.
    pub node: String,
}

/// A job parameter's value in a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ParamValue {
    String(String),
    #[schema(value_type = f64)]
    Number(serde_json::Number),
    Bool(bool),
}

/// Reads `null` as the type's default, so optional maps may be sent as `null`.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads an optional whole number that JSON may spell as `3` or `3.0` (JSON Schema's
/// `integer` admits both); a fraction or a number out of range is refused.
pub(crate) fn whole_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let whole = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => Some(i),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
        _ => None,
    };
    let whole = whole.ok_or_else(|| D::Error::custom(format!("invalid value `{n}`, expected a whole number")))?;
    T::try_from(whole).map(Some).map_err(|_| D::Error::custom(format!("number `{n}` is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn check<T: Serialize + Copy + PartialEq + std::fmt::Debug>(
        all: &[T],
        as_str: fn(T) -> &'static str,
        parse: fn(&str) -> Option<T>,
    ) {
        for &v in all {
            assert_eq!(serde_json::to_value(v).unwrap(), as_str(v), "{v:?}");
            assert_eq!(parse(as_str(v)), Some(v));
        }
    }

    /// A name the store keeps is the name the API sends.
    #[test]
    fn names_are_the_serde_names() {
        check(&ExecutionState::ALL, ExecutionState::as_str, ExecutionState::parse);
        check(&ExecutionReason::ALL, ExecutionReason::as_str, ExecutionReason::parse);
        check(&FiringOutcome::ALL, FiringOutcome::as_str, FiringOutcome::parse);
        check(&FiringReason::ALL, FiringReason::as_str, FiringReason::parse);
        check(&Trigger::ALL, Trigger::as_str, Trigger::parse);
        check(&EventOutcome::ALL, EventOutcome::as_str, EventOutcome::parse);
        check(&EventReason::ALL, EventReason::as_str, EventReason::parse);
        check(&ListenerKind::ALL, ListenerKind::as_str, ListenerKind::parse);
        check(&NodeState::ALL, NodeState::as_str, NodeState::parse);
        check(&CronField::ALL, CronField::as_str, CronField::parse);
        check(&AuditOutcome::ALL, AuditOutcome::as_str, AuditOutcome::parse);
        assert_eq!(FiringReason::parse("bogus"), None);
    }

    /// Schedule and listener bodies: unknown fields refused, `null` taken as left out, whole
    /// numbers however JSON spells them, what is left out not sent, fields in their order.
    #[test]
    fn trigger_requests_read_and_write_their_fields() {
        let s: ScheduleRequest = serde_json::from_str(
            r#"{"name":"a","sandbox":null,"params":{"n":1},"cron":"* * * * *","misfire_max":3.0,"enabled":false}"#,
        )
        .unwrap();
        assert_eq!(
            (s.name.as_deref(), s.sandbox.as_deref(), s.misfire_max, s.enabled),
            (Some("a"), None, Some(3), Some(false))
        );
        assert_eq!(s.params.unwrap()["n"], 1);
        for bad in
            [r#"{"bogus":1}"#, r#"{"misfire_max":2.5}"#, r#"{"kind":"job"}"#, r#"{"name":1}"#, r#"{"enabled":"yes"}"#]
        {
            assert!(serde_json::from_str::<ScheduleRequest>(bad).is_err(), "{bad}");
        }
        let l: ListenerRequest = serde_json::from_str(
            r#"{"name":"l","kind":null,"on_job":null,"secret":"0123456789abcdef","enabled":true}"#,
        )
        .unwrap();
        assert_eq!((l.name.as_deref(), l.kind, l.on_job, l.enabled), (Some("l"), None, None, Some(true)));
        for bad in [r#"{"bogus":1}"#, r#"{"cron":"* * * * *"}"#, r#"{"job":["a"]}"#, r#"{"params":[]}"#] {
            assert!(serde_json::from_str::<ListenerRequest>(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&ScheduleRequest::default()).unwrap(), "{}");
        assert_eq!(serde_json::to_string(&ListenerRequest::default()).unwrap(), "{}");
        let some = |s: &str| Some(s.to_owned());
        let params = Some([("n".to_owned(), serde_json::json!(1))].into());
        let s = ScheduleRequest {
            name: some("a"),
            sandbox: some("sb"),
            job: some("j.toml"),
            params: params.clone(),
            cron: some("@daily"),
            timezone: some("UTC"),
            enabled: Some(true),
            misfire: some("all"),
            misfire_max: Some(2),
            misfire_threshold: some("1m"),
            overlap: some("skip"),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"name":"a","sandbox":"sb","job":"j.toml","params":{"n":1},"cron":"@daily","timezone":"UTC","enabled":true,"misfire":"all","misfire_max":2,"misfire_threshold":"1m","overlap":"skip"}"#
        );
        let l = ListenerRequest {
            name: some("l"),
            kind: some("cluster"),
            sandbox: some("sb"),
            job: some("j.toml"),
            params,
            enabled: Some(false),
            on_cluster: Some(OnClusterRequest { events: None }),
            secret: some("0123456789abcdef"),
            ..ListenerRequest::default()
        };
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"name":"l","kind":"cluster","sandbox":"sb","job":"j.toml","params":{"n":1},"enabled":false,"on_cluster":{},"secret":"0123456789abcdef"}"#
        );
    }

    /// The answers: every field sent, in its order (a listener's source only on its kind).
    #[test]
    fn trigger_answers_write_their_fields() {
        let t = "2026-01-01T00:00:00.000Z".to_owned();
        let s = Schedule {
            id: "i".into(),
            name: "a".into(),
            sandbox: "sb".into(),
            job: "j.toml".into(),
            params: [("n".to_owned(), "1".to_owned())].into(),
            cron: "@daily".into(),
            timezone: "UTC".into(),
            enabled: true,
            misfire: MisfirePolicy::Once,
            misfire_max: None,
            misfire_threshold_ms: 60_000,
            overlap: OverlapPolicy::Allow,
            last_fire_time: None,
            next_fire_time: Some(t.clone()),
            last_execution: None,
            owner: Some("token:ci".into()),
            created_at: t.clone(),
            updated_at: t.clone(),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"id":"i","name":"a","sandbox":"sb","job":"j.toml","params":{"n":"1"},"cron":"@daily","timezone":"UTC","enabled":true,"misfire":"once","misfire_max":null,"misfire_threshold_ms":60000,"overlap":"allow","last_fire_time":null,"next_fire_time":"2026-01-01T00:00:00.000Z","last_execution":null,"owner":"token:ci","created_at":"2026-01-01T00:00:00.000Z","updated_at":"2026-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        let l = Listener {
            id: "i".into(),
            name: "l".into(),
            kind: ListenerKind::Webhook,
            sandbox: "sb".into(),
            job: "j.toml".into(),
            params: BTreeMap::new(),
            enabled: false,
            on_job: None,
            on_file: None,
            on_cluster: None,
            hook_url: Some("/api/v1/hooks/l".into()),
            secret: None,
            owner: None,
            created_at: t.clone(),
            updated_at: t,
        };
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(
            json,
            r#"{"id":"i","name":"l","kind":"webhook","sandbox":"sb","job":"j.toml","params":{},"enabled":false,"hook_url":"/api/v1/hooks/l","owner":null,"created_at":"2026-01-01T00:00:00.000Z","updated_at":"2026-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(serde_json::from_str::<Listener>(&json).unwrap(), l);
    }
}
