//! Schedules, the pure part: cron expressions in an IANA time zone, the next firing times,
//! what to do about firings missed while the whole cluster was down (misfire), what to do
//! when the previous run is still going (overlap), and parameters templated with the
//! firing time.
//!
//! Nothing here reads a clock: every function takes times as Unix milliseconds decided by
//! the caller (the store's clock, guarantee 6 of docs/guarantees.md), so the same inputs
//! always give the same firings on every node. Claiming a firing exactly once is the store's job
//! (guarantee 4); this module only says which firing times exist and which are due.
//!
//! # Expressions
//!
//! Five fields (`minute hour day-of-month month day-of-week`) or six with a leading
//! `second` field, in the syntax of the `croner` crate: `*`, lists `a,b`, ranges `a-b`,
//! steps `*/n` and `a-b/n`, names `JAN`-`DEC` and `SUN`-`SAT` (in their own fields only),
//! `L` (last day of the month, or `5L` the last Friday), `W` (nearest weekday), `#`
//! (`1#2`, the second Monday) and `?` (same as `*` in the day fields). Macros:
//! `@yearly` (`@annually`), `@monthly`, `@weekly` (Sunday 00:00),
//! `@daily` (`@midnight`) and `@hourly`. `@reboot` is refused: a cluster has no single
//! boot, and "when a node starts" is a listener on cluster events, not a schedule.
//! An expression that can never fire (`0 0 30 2 *`) is refused at parse time.
//!
//! # Day of month and day of week
//!
//! The two day fields combine exactly as in Vixie cron (and cronie, Debian's `cron`): a
//! day field whose text starts with `*` (or `?`) is a *star* field, whatever follows
//! (`*`, `*/1`, `*/2`, `*/2,15`); any other (`1-31`, `1-31/2`, `10,19`, `MON-FRI`, `L`,
//! `1,*/5`) is restricted, even one that names every day.
//!
//! - If either day field is a star field, a day fires when it matches **both** fields.
//!   A bare `*` matches every day, so with `*` in one field the other alone decides.
//! - If neither is, a day fires when it matches **either** field.
//!
//! So `* * 10,19 6-11 */2` fires only on the 10th and the 19th of June to November that
//! fall on Sunday, Tuesday, Thursday or Saturday (`*/2` is 0,2,4,6), not on every such
//! weekday; `0 0 1-31/2 * MON` fires on odd days of the month and on Mondays, and
//! `0 0 */2 * MON` only on Mondays that are odd days. The `croner` extension `+` before
//! the day-of-week field (`0 0 1 * +MON`) makes a day match both fields whatever they
//! are. `tests/cron_vixie_differential.rs` checks this rule against Python's `croniter`.
//!
//! # Daylight saving time
//!
//! A schedule fires on the wall clock of its zone. Where the wall clock jumps, one of two
//! rules applies, chosen by the hour field alone:
//!
//! - **Hour field covers every hour** (`*`, `*/1`, `0-23`; e.g. `*/15 * * * *`,
//!   `@hourly`): the schedule follows real elapsed time. It fires at every instant whose
//!   local wall clock time matches. In a spring-forward gap the missing local times simply
//!   do not happen (a `*/15` schedule in Berlin goes 01:45 CET, 03:00 CEST: fifteen real
//!   minutes); in a fall-back overlap the repeated local times fire at both of their
//!   instants (02:00, 02:15 ... 02:45 CEST, then 02:00 ... 02:45 CET: every fifteen real
//!   minutes, no two firings at one instant).
//! - **Any other hour field** (`30 2 * * *`, `0,30 2 * * *`, `0 */2 * * *`): every
//!   matching local date and time fires once. A local time that does not exist (02:30 on
//!   the spring-forward day in Berlin) fires once at the first instant after the gap
//!   (03:00 CEST); several missing local times of one gap all fire as that one instant. A
//!   local time that happens twice (02:30 on the fall-back day) fires once, at its first
//!   occurrence (02:30 CEST), never at the second.
//!
//! For schedules whose seconds, minute and hour are single values this is also what
//! `croner` (and Vixie cron) does; shoal extends the once-per-local-time rule to every
//! schedule with a restricted hour, so `0,30 2 * * *` fires twice on the fall-back day,
//! not four times. Whatever the rule, firing times are distinct instants and strictly
//! increasing, so the store's unique (schedule, firing time) claim never sees two firings
//! at one instant.
//!
//! # Misfires
//!
//! [`due_firings`] takes the last firing time recorded and `now`. A due firing whose
//! lateness (`now - firing`) is within the threshold always runs; one later than that was
//! missed (every node was down) and follows the [`Misfire`] policy. At most
//! [`MAX_FIRINGS_PER_CALL`] firing times are handed out per call, oldest first; a plan cut
//! short says so and the caller calls again at once, so a schedule firing every second
//! after a month down costs many bounded calls, never one unbounded one. Every policy
//! decides each firing time from that time, `now` and the threshold alone, so the cut
//! does not change the outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, SecondsFormat, TimeDelta, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

pub use chrono_tz::Tz;
/// What became of a firing time, and why: the wire's enums, so a stored firing reads as the
/// API shows it.
pub use shoal_wire::{FiringOutcome, FiringReason};

/// At most this many firing times are handed out by one [`due_firings`] call.
pub const MAX_FIRINGS_PER_CALL: usize = 1000;

/// The largest `max` of [`Misfire::All`]: it bounds the look-ahead [`due_firings`] needs.
pub const MAX_MISFIRE_ALL: u32 = 1000;

/// At most this many firing times are returned by [`CronSpec::preview`].
pub const MAX_PREVIEW: usize = 1000;

/// A sensible default lateness threshold: a firing more than a minute late was missed
/// (Quartz's default misfire threshold is also a minute).
pub const DEFAULT_MISFIRE_THRESHOLD_MS: i64 = 60_000;

/// One field of a cron expression: the wire's enum (`shoal_wire::CronField`), so the field
/// an error names is the field the API's `details` show. `ALL` is in the order of a
/// six-field expression.
pub use shoal_wire::CronField;

/// What a field accepts, for error messages.
fn accepts(field: CronField) -> &'static str {
    match field {
        CronField::Second | CronField::Minute => "values 0-59, a list `a,b`, a range `a-b` or a step `*/n` or `a-b/n`",
        CronField::Hour => "values 0-23, a list `a,b`, a range `a-b` or a step `*/n` or `a-b/n`",
        CronField::DayOfMonth => {
            "values 1-31, a list, a range, a step, `L` (last day), `15W` (nearest weekday) or `?`"
        }
        CronField::Month => "values 1-12 or JAN-DEC, a list, a range or a step",
        CronField::DayOfWeek => {
            "values 0-7 (0 and 7 are Sunday) or SUN-SAT, a list, a range, a step, `5L` (last Friday), `1#2` (second Monday) or `?`"
        }
    }
}

/// Why a schedule's definition was refused. Every message says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the cron expression is empty; write five fields (minute hour day-of-month month day-of-week), six with a leading second field, or a macro such as `@daily`")]
    Empty,
    #[error("the cron expression `{expr}` has {found} fields; write five (minute hour day-of-month month day-of-week) or six with a leading second field")]
    FieldCount { expr: String, found: usize },
    #[error("unknown cron macro `{0}`; use `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` or `@hourly` on its own, or write the fields")]
    UnknownMacro(String),
    #[error("`@reboot` is not supported: a cluster has no single boot; to start a job when a node starts, use a listener on cluster events")]
    Reboot,
    /// One field is wrong. `position` is 1-based in the expression as written (in a
    /// five-field expression the minute is field 1, in a six-field one field 2).
    #[error("invalid {field} field `{value}` (field {position} of the cron expression): {reason}; the {field} field takes {accepts}", accepts = accepts(*field))]
    Field { field: CronField, position: usize, value: String, reason: String },
    /// Every field is valid on its own but the whole is not.
    #[error("invalid cron expression `{expr}`: {reason}")]
    Invalid { expr: String, reason: String },
    #[error("the cron expression `{0}` never fires (no date matches its day and month fields); check the day-of-month, month and day-of-week fields")]
    NeverFires(String),
    #[error(
        "unknown time zone `{name}`{hint}; use an IANA zone name such as `Europe/Paris`, `America/New_York` or `UTC`"
    )]
    UnknownTimeZone { name: String, hint: String },
    #[error("unknown misfire policy `{0}`; use `skip`, `once` or `all`")]
    UnknownMisfire(String),
    #[error("misfire policy `all` needs `max` between 1 and {MAX_MISFIRE_ALL} (got {0}); use `skip` to run none")]
    MisfireMax(u32),
    #[error("unknown overlap policy `{0}`; use `allow`, `skip`, `queue` or `replace`")]
    UnknownOverlap(String),
}

impl ScheduleError {
    /// The field an error points at and its 1-based position, for an API answer that
    /// points at it.
    pub fn field(&self) -> Option<(CronField, usize)> {
        match self {
            ScheduleError::Field { field, position, .. } => Some((*field, *position)),
            _ => None,
        }
    }
}

/// How a schedule behaves where the wall clock jumps; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DstRule {
    /// The hour field covers every hour: fire at every instant whose wall clock matches.
    Elapsed,
    /// Fire each matching local date and time once: a missing one at the first instant
    /// after the gap, a repeated one at its first occurrence.
    OncePerLocalTime,
}

/// A parsed, valid cron expression in an IANA time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSpec {
    expr: String,
    tz: Tz,
    cron: Cron,
    rule: DstRule,
}

/// How a local wall clock time maps to instants.
enum Local {
    Single(i64),
    Twice(i64, i64),
    Missing,
}

impl CronSpec {
    /// Parses a cron expression (five fields, six with seconds, or a macro) and an IANA
    /// time zone name.
    pub fn parse(expr: &str, tz: &str) -> Result<CronSpec, ScheduleError> {
        let expr = expr.trim();
        let six = six_fields(expr)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .dom_and_dow(day_fields_need_both(&six[3], &six[5]))
            .build()
            .parse(&six.join(" "))
            .map_err(|e| ScheduleError::Invalid { expr: expr.to_owned(), reason: croner_reason(&e) })?;
        // From a fixed date, not a clock: any expression without a year field that can
        // fire at all fires within 28 years of any date.
        let origin = DateTime::UNIX_EPOCH.naive_utc();
        if cron.find_next_occurrence(&origin, false).is_err() {
            return Err(ScheduleError::NeverFires(expr.to_owned()));
        }
        let tz = parse_tz(tz)?;
        let every_hour = (0..24).all(|h| cron.pattern.hour_match(h).unwrap_or(false));
        let rule = if every_hour { DstRule::Elapsed } else { DstRule::OncePerLocalTime };
        Ok(CronSpec { expr: expr.to_owned(), tz, cron, rule })
    }

    /// The expression as given (trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The IANA name of the time zone.
    pub fn tz_name(&self) -> &'static str {
        self.tz.name()
    }

    /// Which daylight-saving rule applies to this schedule.
    pub fn dst_rule(&self) -> DstRule {
        self.rule
    }

    /// The first firing time strictly after `after_ms` (Unix milliseconds), or `None` if
    /// there is none that the calendar arithmetic can reach (past the year 5000).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let next = match self.rule {
            DstRule::Elapsed => self.next_elapsed(after_ms),
            DstRule::OncePerLocalTime => self.next_once_per_local_time(after_ms),
        }?;
        // Both searches guarantee this; a wrong answer here would mean a firing handed
        // out twice, so it is checked rather than trusted.
        (next > after_ms).then_some(next)
    }

    /// The next `n` firing times after `after_ms`: `next_after` iterated, at most
    /// [`MAX_PREVIEW`] of them, fewer if the schedule ends.
    pub fn preview(&self, after_ms: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n.min(MAX_PREVIEW));
        let mut t = after_ms;
        while out.len() < n.min(MAX_PREVIEW) {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// An instant as RFC 3339 in the schedule's zone (`2024-03-31T03:00:00+02:00`).
    pub fn format_local(&self, at_ms: i64) -> String {
        DateTime::<Utc>::from_timestamp_millis(at_ms)
            .map(|t| t.with_timezone(&self.tz).to_rfc3339_opts(SecondsFormat::AutoSi, false))
            .unwrap_or_else(|| at_ms.to_string())
    }

    /// Parameters for the firing at `fire_ms`: see [`firing_params`].
    pub fn firing_params(&self, template: &BTreeMap<String, String>, fire_ms: i64) -> BTreeMap<String, String> {
        firing_params(template, fire_ms, self.tz)
    }

    /// Every instant whose local time matches: croner's own search in the zone does
    /// exactly this for an expression whose hour field is not a single value.
    fn next_elapsed(&self, after_ms: i64) -> Option<i64> {
        let start = DateTime::from_timestamp_millis(after_ms)?.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp_millis())
    }

    /// Walks matching local times after the local time of `after_ms` and maps each to
    /// its one instant. The first local time that maps after `after_ms` gives the answer:
    /// local times after it map to later instants (a later unique local time is a later
    /// instant; a later repeated one is taken at its first occurrence, which comes after
    /// any earlier local time; a later missing one maps to the end of its gap). Local
    /// times before the local time of `after_ms` map at or before it, for the same
    /// reasons, so they need no look.
    fn next_once_per_local_time(&self, after_ms: i64) -> Option<i64> {
        let mut cursor = self.local(after_ms)?;
        let mut inclusive = false;
        // Each turn either answers or jumps past a repeated range, so a handful of turns
        // always suffice; the bound only guards against a time zone table gone wrong.
        for _ in 0..64 {
            let local = self.cron.find_next_occurrence(&cursor, inclusive).ok()?;
            match self.resolve(&local) {
                Local::Single(at) if at > after_ms => return Some(at),
                Local::Single(_) => {}
                Local::Twice(first, _) if first > after_ms => return Some(first),
                Local::Twice(first, second) => {
                    // `after_ms` is in the second occurrence of this repeated range and
                    // every repeated local time's first occurrence is behind it: go on
                    // from the end of the range.
                    let change = self.offset_change(first, second)?;
                    let range_end = self.local(change)? + TimeDelta::milliseconds(second - first);
                    if range_end > local {
                        cursor = range_end;
                        inclusive = true;
                        continue;
                    }
                }
                Local::Missing => {
                    let after_gap = self.gap_end(local)?;
                    if after_gap > after_ms {
                        return Some(after_gap);
                    }
                }
            }
            cursor = local;
            inclusive = false;
        }
        None
    }

    /// The local wall clock time of an instant.
    fn local(&self, ms: i64) -> Option<NaiveDateTime> {
        Some(DateTime::from_timestamp_millis(ms)?.with_timezone(&self.tz).naive_local())
    }

    fn offset_ms(&self, ms: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp_millis(ms)?.naive_utc();
        Some(i64::from(self.tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1000)
    }

    fn resolve(&self, local: &NaiveDateTime) -> Local {
        match self.tz.from_local_datetime(local) {
            LocalResult::Single(at) => Local::Single(at.timestamp_millis()),
            LocalResult::Ambiguous(first, second) => Local::Twice(first.timestamp_millis(), second.timestamp_millis()),
            LocalResult::None => Local::Missing,
        }
    }

    /// The first instant in `(lo, hi]` whose UTC offset differs from `lo`'s, found by
    /// bisection; the caller knows the offset changes exactly once in between.
    fn offset_change(&self, mut lo: i64, mut hi: i64) -> Option<i64> {
        let before = self.offset_ms(lo)?;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.offset_ms(mid)? == before {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(hi)
    }

    /// The first instant after the gap that the missing local time `local` falls in:
    /// the moment the clock jumped.
    fn gap_end(&self, local: NaiveDateTime) -> Option<i64> {
        const STEP: TimeDelta = TimeDelta::minutes(15);
        // Walk out of the gap both ways in quarter hours (gaps are whole quarter hours
        // long in practice; a day, for Samoa's 2011 jump, is the longest on record).
        let existing = |from: NaiveDateTime, step: TimeDelta, pick_latest: bool| -> Option<i64> {
            let mut at = from;
            for _ in 0..(4 * 48) {
                at = at.checked_add_signed(step)?;
                match self.resolve(&at) {
                    Local::Single(ms) => return Some(ms),
                    Local::Twice(first, second) => return Some(if pick_latest { second } else { first }),
                    Local::Missing => {}
                }
            }
            None
        };
        let before = existing(local, -STEP, true)?;
        let after = existing(local, STEP, false)?;
        self.offset_change(before, after)
    }
}

impl fmt::Display for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expr, self.tz.name())
    }
}

/// Whether a day must match both day fields (Vixie cron's rule, see the module
/// documentation): when either of them starts with `*` (or `?`, which croner reads as
/// `*`). croner alone treats only a bare `*` that way and combines `*/2` with the other
/// field by "or"; with `dom_and_dow` it combines two fields that are not a bare `*` by
/// "and", and a bare `*` still leaves the other field alone to decide, so setting it
/// exactly when Vixie cron would gives Vixie cron's rule in every case.
fn day_fields_need_both(day_of_month: &str, day_of_week: &str) -> bool {
    let star = |field: &str| field.starts_with(['*', '?']);
    star(day_of_month) || star(day_of_week)
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Required).year(Year::Disallowed).build()
}

/// The expression as six fields (seconds first), each field checked on its own so that an
/// error names the field.
fn six_fields(expr: &str) -> Result<Vec<String>, ScheduleError> {
    if expr.is_empty() {
        return Err(ScheduleError::Empty);
    }
    if expr.starts_with('@') {
        let fields = match expr.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *",
            "@monthly" => "0 0 0 1 * *",
            "@weekly" => "0 0 0 * * 0",
            "@daily" | "@midnight" => "0 0 0 * * *",
            "@hourly" => "0 0 * * * *",
            "@reboot" => return Err(ScheduleError::Reboot),
            _ => return Err(ScheduleError::UnknownMacro(expr.to_owned())),
        };
        return Ok(fields.split(' ').map(str::to_owned).collect());
    }
    let written: Vec<&str> = expr.split_whitespace().collect();
    let mut six: Vec<String> = match written.len() {
        5 => std::iter::once("0").chain(written.iter().copied()).map(str::to_owned).collect(),
        6 => written.iter().map(|f| (*f).to_owned()).collect(),
        found => return Err(ScheduleError::FieldCount { expr: expr.to_owned(), found }),
    };
    let offset = 6 - written.len();
    for (i, field) in CronField::ALL.into_iter().enumerate().skip(offset) {
        let value = six[i].to_ascii_uppercase();
        let fail = |reason: String| ScheduleError::Field {
            field,
            position: i + 1 - offset,
            value: written[i - offset].to_owned(),
            reason,
        };
        check_names(field, &value).map_err(fail)?;
        // Probe croner with this field alone, the others wildcards.
        let mut probe = ["0", "*", "*", "*", "*", "*"];
        probe[i] = &value;
        parser().parse(&probe.join(" ")).map_err(|e| fail(croner_reason(&e)))?;
        six[i] = value;
    }
    Ok(six)
}

/// Names are only allowed in their own field: croner would read `MON` in the month field
/// as 1 (January) without complaint.
fn check_names(field: CronField, value: &str) -> Result<(), String> {
    const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    for word in value.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()) {
        let ok = match field {
            CronField::Month => MONTHS.contains(&word),
            CronField::DayOfWeek => DAYS.contains(&word) || word == "L",
            CronField::DayOfMonth => matches!(word, "L" | "W" | "LW"),
            CronField::Second | CronField::Minute | CronField::Hour => false,
        };
        if !ok {
            return Err(format!("`{word}` is not allowed here"));
        }
    }
    Ok(())
}

/// croner's message in shoal's style: lowercase, no trailing full stop.
fn croner_reason(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    let raw = match e {
        E::InvalidPattern(m) | E::IllegalCharacters(m) | E::ComponentError(m) => m.clone(),
        other => other.to_string(),
    };
    let raw = raw.trim().trim_end_matches('.');
    let mut chars = raw.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => "not a valid cron field".to_owned(),
    }
}

/// The time zone names a schedule accepts, in the tz database's spelling.
pub fn time_zone_names() -> impl Iterator<Item = &'static str> {
    chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
}

fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    let trimmed = name.trim();
    if let Ok(tz) = Tz::from_str(trimmed) {
        return Ok(tz);
    }
    let hint = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(trimmed))
        .map(|tz| format!(" (did you mean `{}`?)", tz.name()))
        .unwrap_or_default();
    Err(ScheduleError::UnknownTimeZone { name: name.to_owned(), hint })
}

/// What to do with firings missed by more than the lateness threshold, i.e. while every
/// node was down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Misfire {
    /// Run none of them; record each as skipped.
    Skip,
    /// Run the latest missed firing only; record the others as skipped.
    Once,
    /// Run the newest `max` missed firings, each with its own firing time; record the
    /// older ones as skipped.
    All { max: u32 },
}

impl Misfire {
    /// A policy from its name and, for `all`, its `max` (1 to [`MAX_MISFIRE_ALL`]).
    pub fn parse(policy: &str, max: Option<u32>) -> Result<Misfire, ScheduleError> {
        match policy {
            "skip" => Ok(Misfire::Skip),
            "once" => Ok(Misfire::Once),
            "all" => {
                let max = max.unwrap_or(MAX_MISFIRE_ALL);
                if (1..=MAX_MISFIRE_ALL).contains(&max) {
                    Ok(Misfire::All { max })
                } else {
                    Err(ScheduleError::MisfireMax(max))
                }
            }
            other => Err(ScheduleError::UnknownMisfire(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::Once => "once",
            Misfire::All { .. } => "all",
        }
    }
}

/// Why a firing time started no execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Missed by more than the lateness threshold, and the misfire policy did not run it.
    Misfire,
    /// The previous run was still going and the overlap policy is `skip`.
    Overlap,
    /// The schedule was disabled at its firing time.
    Disabled,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Misfire => "misfire",
            SkipReason::Overlap => "overlap",
            SkipReason::Disabled => "disabled",
        }
    }
}

/// What the stored firing says of a skip.
impl From<SkipReason> for FiringReason {
    fn from(r: SkipReason) -> FiringReason {
        match r {
            SkipReason::Misfire => FiringReason::Misfire,
            SkipReason::Overlap => FiringReason::Overlap,
            SkipReason::Disabled => FiringReason::Disabled,
        }
    }
}

/// A firing time that starts no execution, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub fire_ms: i64,
    pub reason: SkipReason,
}

/// What one [`due_firings`] call decided.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Firing times to enqueue now, oldest first.
    pub run: Vec<i64>,
    /// Firing times to record as skipped, oldest first.
    pub skipped: Vec<Skipped>,
    /// The first firing time after those in this plan. Later than `now` when the plan is
    /// complete: wait until then. At or before `now` when the plan was cut at
    /// [`MAX_FIRINGS_PER_CALL`]: record this plan and call again at once. `None`: the
    /// schedule never fires again.
    pub next_ms: Option<i64>,
    /// Whether every firing due at `now` is in this plan.
    pub complete: bool,
}

impl Plan {
    /// The latest firing time this plan covers (run or skipped): what to pass as
    /// `last_fired_ms` next time, once the plan is recorded.
    pub fn last_covered(&self) -> Option<i64> {
        let run = self.run.last().copied();
        let skipped = self.skipped.last().map(|s| s.fire_ms);
        run.max(skipped)
    }
}

/// Which firing times are due at `now_ms` and what to do with each.
///
/// `last_fired_ms` is the last firing time recorded (run or skipped): every firing after
/// it and at or before `now_ms` is due. A schedule with none recorded yet should pass the
/// time it was created or last enabled; `None` counts from `now_ms`, so nothing at or
/// before `now_ms` is due.
///
/// A due firing at most `lateness_threshold_ms` old runs whatever the policy; an older one
/// was missed and follows `policy`, recorded as skipped with reason
/// [`SkipReason::Misfire`] when the policy does not run it. The policy is applied per
/// firing time from `now_ms` alone: `once` runs the missed firing whose successor is not
/// missed, `all` runs a missed firing when fewer than `max` missed firings follow it.
///
/// At most [`MAX_FIRINGS_PER_CALL`] firings, the oldest due ones, are covered; then
/// `complete` is false, `next_ms` is the next due firing and the caller records the plan
/// and calls again. Each call computes at most `MAX_FIRINGS_PER_CALL + 1 + max` firing
/// times.
pub fn due_firings(
    spec: &CronSpec,
    last_fired_ms: Option<i64>,
    now_ms: i64,
    lateness_threshold_ms: i64,
    policy: Misfire,
) -> Plan {
    let start = last_fired_ms.unwrap_or(now_ms);
    // Firings before this instant are more than the threshold late: missed.
    let on_time_from = now_ms.saturating_sub(lateness_threshold_ms.max(0));

    let mut due = Vec::new();
    let mut t = start;
    let next_ms = loop {
        match spec.next_after(t) {
            Some(f) if f <= now_ms && due.len() < MAX_FIRINGS_PER_CALL => {
                due.push(f);
                t = f;
            }
            other => break other,
        }
    };
    let complete = next_ms.is_none_or(|n| n > now_ms);

    // For `all`: how many missed firings follow this plan, counted up to `max`.
    let missed_after_plan = match policy {
        Misfire::All { max } => {
            let mut count = 0;
            let mut cursor = next_ms;
            while let Some(f) = cursor.filter(|f| *f < on_time_from && count < max) {
                count += 1;
                cursor = spec.next_after(f);
            }
            count
        }
        _ => 0,
    };

    let missed_in_plan = due.iter().filter(|f| **f < on_time_from).count();
    let mut plan = Plan { run: Vec::new(), skipped: Vec::new(), next_ms, complete };
    for (i, &f) in due.iter().enumerate() {
        let runs = if f >= on_time_from {
            true
        } else {
            match policy {
                Misfire::Skip => false,
                Misfire::Once => {
                    let successor = due.get(i + 1).copied().or(next_ms);
                    successor.is_none_or(|s| s >= on_time_from)
                }
                Misfire::All { max } => {
                    // Missed firings are a prefix of `due`, so those after this one in the
                    // plan are the rest of that prefix.
                    let after = (missed_in_plan - i - 1) as u64 + u64::from(missed_after_plan);
                    after < u64::from(max)
                }
            }
        };
        if runs {
            plan.run.push(f);
        } else {
            plan.skipped.push(Skipped { fire_ms: f, reason: SkipReason::Misfire });
        }
    }
    plan
}

/// What to do when a firing comes while the schedule's previous run is still going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start the new run alongside the previous one (the job's `max_concurrent` still
    /// applies).
    #[default]
    Allow,
    /// Start nothing; record the firing as skipped with reason `overlap`.
    Skip,
    /// Start the new run when the previous one has finished.
    Queue,
    /// Cancel the previous run, then start the new one.
    Replace,
}

impl Overlap {
    pub fn parse(s: &str) -> Result<Overlap, ScheduleError> {
        match s {
            "allow" => Ok(Overlap::Allow),
            "skip" => Ok(Overlap::Skip),
            "queue" => Ok(Overlap::Queue),
            "replace" => Ok(Overlap::Replace),
            other => Err(ScheduleError::UnknownOverlap(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Replace => "replace",
        }
    }
}

impl FromStr for Overlap {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Overlap::parse(s)
    }
}

/// What the scheduler does with one firing, given the overlap policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlapDecision {
    Start,
    /// Record the firing as skipped with reason [`SkipReason::Overlap`].
    Skip,
    QueueAfterPrevious,
    CancelPreviousThenStart,
}

/// The decision for a firing: with no previous run going, always [`OverlapDecision::Start`].
pub fn on_overlap(policy: Overlap, previous_running: bool) -> OverlapDecision {
    if !previous_running {
        return OverlapDecision::Start;
    }
    match policy {
        Overlap::Allow => OverlapDecision::Start,
        Overlap::Skip => OverlapDecision::Skip,
        Overlap::Queue => OverlapDecision::QueueAfterPrevious,
        Overlap::Replace => OverlapDecision::CancelPreviousThenStart,
    }
}

/// A schedule's parameters for the firing at `fire_ms`: in each value, `{fire_time}`
/// becomes the firing time in RFC 3339 in the schedule's zone (`2024-03-31T03:00:00+02:00`),
/// `{fire_date}` the local date (`2024-03-31`), `{fire_unix}` Unix seconds and
/// `{fire_unix_ms}` Unix milliseconds.
///
/// Everything else is left exactly as written, in the job's template syntax: other
/// `{name}` placeholders, and `{{` and `}}`, which stay doubled so that a later
/// substitution still reads them as literal braces (`{{fire_date}}` is not replaced).
pub fn firing_params(template: &BTreeMap<String, String>, fire_ms: i64, tz: Tz) -> BTreeMap<String, String> {
    let local = DateTime::<Utc>::from_timestamp_millis(fire_ms).map(|at| at.with_timezone(&tz));
    let value = |name: &str| -> Option<String> {
        match name {
            "fire_time" => local.map(|at| at.to_rfc3339_opts(SecondsFormat::AutoSi, false)),
            "fire_date" => local.map(|at| at.format("%Y-%m-%d").to_string()),
            "fire_unix" => Some(fire_ms.div_euclid(1000).to_string()),
            "fire_unix_ms" => Some(fire_ms.to_string()),
            _ => None,
        }
    };
    template.iter().map(|(k, v)| (k.clone(), render(v, &value))).collect()
}

pub(crate) fn render(template: &str, value: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with("{{") || rest.starts_with("}}") {
            out.push_str(&rest[..2]);
            rest = &rest[2..];
            continue;
        }
        if rest.starts_with('{') {
            if let Some(end) = rest.find('}') {
                if let Some(v) = value(&rest[1..end]) {
                    out.push_str(&v);
                    rest = &rest[end + 1..];
                    continue;
                }
            }
        }
        out.push_str(&rest[..1]);
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Unix milliseconds of a UTC date and time written as `2024-03-31T01:00:00`.
    fn utc(s: &str) -> i64 {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap().and_utc().timestamp_millis()
    }

    fn spec(expr: &str, tz: &str) -> CronSpec {
        CronSpec::parse(expr, tz).unwrap_or_else(|e| panic!("`{expr}` in {tz}: {e}"))
    }

    /// The firings of `expr` in `tz` after `from` (UTC), as UTC strings.
    fn firings(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        spec(expr, tz)
            .preview(utc(from), n)
            .into_iter()
            .map(|ms| DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S").to_string())
            .collect()
    }

    fn field_error(expr: &str) -> (CronField, usize) {
        match CronSpec::parse(expr, "UTC") {
            Err(e) => e.field().unwrap_or_else(|| panic!("`{expr}`: no field in {e:?}")),
            Ok(_) => panic!("`{expr}` was accepted"),
        }
    }

    #[test]
    fn parses_five_and_six_fields_and_macros() {
        assert_eq!(
            firings("*/15 * * * *", "UTC", "2024-05-01T12:07:00", 2),
            ["2024-05-01T12:15:00", "2024-05-01T12:30:00"]
        );
        assert_eq!(
            firings("*/20 * * * * *", "UTC", "2024-05-01T12:07:00", 2),
            ["2024-05-01T12:07:20", "2024-05-01T12:07:40"]
        );
        // Strictly after: a firing time itself is not its own successor.
        assert_eq!(firings("0 * * * *", "UTC", "2024-05-01T12:00:00", 1), ["2024-05-01T13:00:00"]);
        assert_eq!(firings("0 9 * * MON-FRI", "UTC", "2024-05-03T10:00:00", 1), ["2024-05-06T09:00:00"]);
        assert_eq!(firings("0 0 1 jan,jul *", "UTC", "2024-05-03T10:00:00", 1), ["2024-07-01T00:00:00"]);
        assert_eq!(firings("0 0 L * *", "UTC", "2024-02-03T00:00:00", 1), ["2024-02-29T00:00:00"]);
        assert_eq!(firings("0 0 29 2 *", "UTC", "2024-03-01T00:00:00", 1), ["2028-02-29T00:00:00"]);
        for (mac, fields) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("@DAILY", "0 0 * * *"),
        ] {
            let t = utc("2024-05-03T10:11:12");
            assert_eq!(spec(mac, "Europe/Paris").preview(t, 5), spec(fields, "Europe/Paris").preview(t, 5), "{mac}");
        }
        let s = spec("  30 2 * * *  ", "Europe/Berlin");
        assert_eq!(s.expr(), "30 2 * * *");
        assert_eq!(s.tz_name(), "Europe/Berlin");
        assert_eq!(s.to_string(), "30 2 * * * (Europe/Berlin)");
    }

    /// The days (UTC) on which a midnight schedule `0 0 {dom} {month} {dow}` fires in
    /// 2024 and 2025, as `Sat 2024-08-10`.
    fn midnights(dom: &str, month: &str, dow: &str) -> Vec<String> {
        let s = spec(&format!("0 0 {dom} {month} {dow}"), "UTC");
        let end = utc("2026-01-01T00:00:00");
        s.preview(utc("2023-12-31T12:00:00"), MAX_PREVIEW)
            .into_iter()
            .take_while(|t| *t < end)
            .map(|ms| DateTime::from_timestamp_millis(ms).unwrap().format("%a %Y-%m-%d").to_string())
            .collect()
    }

    /// Every day of 2024 and 2025 (UTC) for which `keep(day of month, weekday from
    /// Sunday = 0, month)` holds, in the form of [`midnights`].
    fn days_where(keep: impl Fn(u32, u32, u32) -> bool) -> Vec<String> {
        use chrono::Datelike;
        let mut day = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        let mut out = Vec::new();
        while day.year() < 2026 {
            if keep(day.day(), day.weekday().num_days_from_sunday(), day.month()) {
                out.push(day.format("%a %Y-%m-%d").to_string());
            }
            day = day.succ_opt().unwrap();
        }
        out
    }

    #[test]
    fn day_fields_combine_as_in_vixie_cron() {
        // The example of issue 10: `*/2` starts with `*`, so a day must match both fields.
        assert_eq!(
            midnights("10,19", "6-11", "*/2"),
            [
                "Sat 2024-08-10",
                "Tue 2024-09-10",
                "Thu 2024-09-19",
                "Thu 2024-10-10",
                "Sat 2024-10-19",
                "Sun 2024-11-10",
                "Tue 2024-11-19",
                "Tue 2025-06-10",
                "Thu 2025-06-19",
                "Thu 2025-07-10",
                "Sat 2025-07-19",
                "Sun 2025-08-10",
                "Tue 2025-08-19",
                "Sun 2025-10-19",
            ]
        );
        // The same with every minute of those days: 1440 firings on 2024-08-10, then the
        // next day of the rule.
        let every_minute = spec("* * 10,19 6-11 */2", "UTC");
        let first = every_minute.preview(utc("2024-06-01T00:00:00"), MAX_PREVIEW);
        assert_eq!(first[0], utc("2024-08-10T00:00:00"));
        assert!(first.windows(2).all(|w| w[1] - w[0] == 60_000));
        let last = every_minute.preview(utc("2024-08-10T23:58:30"), 2);
        assert_eq!(last, [utc("2024-08-10T23:59:00"), utc("2024-09-10T00:00:00")]);

        let even = |w: u32| w.is_multiple_of(2);
        let odd = |d: u32| !d.is_multiple_of(2);
        #[allow(clippy::type_complexity)]
        let cases: [(&str, &str, &str, Box<dyn Fn(u32, u32, u32) -> bool>); 20] = [
            // A star field: the day must match both; a bare `*` leaves the other alone.
            ("10,19", "6-11", "*/2", Box::new(|d, w, m| (d == 10 || d == 19) && even(w) && (6..=11).contains(&m))),
            ("*", "*", "1", Box::new(|_, w, _| w == 1)),
            ("*", "*", "*", Box::new(|_, _, _| true)),
            ("1", "*", "*", Box::new(|d, _, _| d == 1)),
            ("*/1", "*", "1", Box::new(|_, w, _| w == 1)),
            ("1", "*", "*/1", Box::new(|d, _, _| d == 1)),
            ("*/2", "*", "MON", Box::new(|d, w, _| odd(d) && w == 1)),
            ("1,15", "*", "*/2", Box::new(|d, w, _| (d == 1 || d == 15) && even(w))),
            ("*/2", "*", "*/3", Box::new(|d, w, _| odd(d) && w.is_multiple_of(3))),
            ("*/10,15", "*", "5", Box::new(|d, w, _| matches!(d, 1 | 11 | 15 | 21 | 31) && w == 5)),
            (
                "L",
                "*",
                "*/2",
                Box::new(|d, w, m| d == [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1] && even(w)),
            ),
            // `?` is `*`.
            ("?", "*", "1", Box::new(|_, w, _| w == 1)),
            ("1", "*", "?", Box::new(|d, _, _| d == 1)),
            ("?/2", "*", "1", Box::new(|d, w, _| odd(d) && w == 1)),
            // Neither starts with `*`: either field is enough, even one naming every day.
            ("1-31/2", "*", "1", Box::new(|d, w, _| odd(d) || w == 1)),
            ("1-31", "*", "1", Box::new(|_, _, _| true)),
            ("1,15", "*", "FRI", Box::new(|d, w, _| d == 1 || d == 15 || w == 5)),
            ("1,*/10", "*", "0-2", Box::new(|d, w, _| matches!(d, 1 | 11 | 21 | 31) || w <= 2)),
            ("13", "*", "5", Box::new(|d, w, _| d == 13 || w == 5)),
            // croner's `+` on the day of week: both, whatever the fields.
            ("13", "*", "+5", Box::new(|d, w, _| d == 13 && w == 5)),
        ];
        for (dom, month, dow, keep) in cases {
            assert_eq!(midnights(dom, month, dow), days_where(keep), "0 0 {dom} {month} {dow}");
        }

        // Only the day fields' first character counts: a day of week written out in full
        // is still restricted, `*` first is a star field.
        assert_eq!(midnights("13", "*", "0-6"), days_where(|_, _, _| true));
        assert_eq!(midnights("13", "*", "*/1"), days_where(|d, _, _| d == 13));
        // Macros keep their meaning.
        assert_eq!(
            spec("@weekly", "UTC").preview(utc("2024-05-01T00:00:00"), 2),
            [utc("2024-05-05T00:00:00"), utc("2024-05-12T00:00:00")]
        );
        assert_eq!(spec("@monthly", "UTC").next_after(utc("2024-05-01T00:00:00")), Some(utc("2024-06-01T00:00:00")));
        // "And" can leave no day at all: such an expression is refused.
        assert!(matches!(CronSpec::parse("0 0 31 2 */2", "UTC"), Err(ScheduleError::NeverFires(_))));
        assert!(matches!(CronSpec::parse("0 0 30 2 */1", "UTC"), Err(ScheduleError::NeverFires(_))));
        assert_eq!(midnights("30", "2", "1"), days_where(|_, w, m| m == 2 && w == 1));
    }

    #[test]
    fn refuses_bad_expressions_naming_the_field() {
        assert_eq!(field_error("61 * * * *"), (CronField::Minute, 1));
        assert_eq!(field_error("* 24 * * *"), (CronField::Hour, 2));
        assert_eq!(field_error("0 0 32 * *"), (CronField::DayOfMonth, 3));
        assert_eq!(field_error("0 0 * 13 *"), (CronField::Month, 4));
        assert_eq!(field_error("0 0 * * 8"), (CronField::DayOfWeek, 5));
        assert_eq!(field_error("60 * * * * *"), (CronField::Second, 1));
        assert_eq!(field_error("0 61 * * * *"), (CronField::Minute, 2));
        assert_eq!(field_error("0 0 0 * * FOO"), (CronField::DayOfWeek, 6));
        assert_eq!(field_error("*/0 * * * *"), (CronField::Minute, 1));
        assert_eq!(field_error("5-1 * * * *"), (CronField::Minute, 1));
        assert_eq!(field_error("a * * * *"), (CronField::Minute, 1));
        // Names only in their own field: croner alone would read these as numbers.
        assert_eq!(field_error("0 0 * * JAN"), (CronField::DayOfWeek, 5));
        assert_eq!(field_error("0 0 * MON *"), (CronField::Month, 4));
        assert_eq!(field_error("0 0 W * *"), (CronField::DayOfMonth, 3));

        let e = CronSpec::parse("0 0 * 13 *", "UTC").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("month field `13` (field 4"), "{msg}");
        assert!(msg.contains("1-12"), "{msg}");

        assert_eq!(CronSpec::parse("", "UTC"), Err(ScheduleError::Empty));
        assert_eq!(CronSpec::parse("   ", "UTC"), Err(ScheduleError::Empty));
        assert!(matches!(CronSpec::parse("* * * *", "UTC"), Err(ScheduleError::FieldCount { found: 4, .. })));
        assert!(matches!(CronSpec::parse("0 0 0 1 1 * 2030", "UTC"), Err(ScheduleError::FieldCount { found: 7, .. })));
        assert_eq!(CronSpec::parse("@reboot", "UTC"), Err(ScheduleError::Reboot));
        assert!(matches!(CronSpec::parse("@fortnightly", "UTC"), Err(ScheduleError::UnknownMacro(_))));
        assert!(matches!(CronSpec::parse("@daily 5", "UTC"), Err(ScheduleError::UnknownMacro(_))));
        assert!(matches!(CronSpec::parse("0 0 30 2 *", "UTC"), Err(ScheduleError::NeverFires(_))));
        assert!(matches!(CronSpec::parse("0 0 31 4,6 *", "UTC"), Err(ScheduleError::NeverFires(_))));
    }

    #[test]
    fn refuses_unknown_time_zones() {
        let e = CronSpec::parse("0 0 * * *", "Mars/Olympus").unwrap_err();
        assert!(matches!(e, ScheduleError::UnknownTimeZone { .. }));
        let msg = e.to_string();
        assert!(msg.contains("`Mars/Olympus`") && msg.contains("Europe/Paris") && msg.contains("UTC"), "{msg}");
        let e = CronSpec::parse("0 0 * * *", "europe/paris").unwrap_err();
        assert!(e.to_string().contains("did you mean `Europe/Paris`?"), "{e}");
        assert!(CronSpec::parse("0 0 * * *", "").is_err());
        for tz in ["UTC", "Etc/UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"] {
            spec("0 0 * * *", tz);
        }
    }

    #[test]
    fn error_messages_follow_the_style() {
        let errors = [
            CronSpec::parse("", "UTC").unwrap_err(),
            CronSpec::parse("* *", "UTC").unwrap_err(),
            CronSpec::parse("@reboot", "UTC").unwrap_err(),
            CronSpec::parse("@often", "UTC").unwrap_err(),
            CronSpec::parse("61 * * * *", "UTC").unwrap_err(),
            CronSpec::parse("0 0 30 2 *", "UTC").unwrap_err(),
            CronSpec::parse("* * * * *", "Nowhere").unwrap_err(),
            Misfire::parse("sometimes", None).unwrap_err(),
            Misfire::parse("all", Some(0)).unwrap_err(),
            Overlap::parse("never").unwrap_err(),
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| !c.is_uppercase()), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
        }
    }

    // Berlin, 2024-03-31: 02:00 CET (+01:00) jumps to 03:00 CEST (+02:00), at 01:00 UTC.
    // Berlin, 2024-10-27: 03:00 CEST goes back to 02:00 CET, at 01:00 UTC; 02:00-02:59 twice.

    #[test]
    fn berlin_spring_forward_fires_a_missing_local_time_once_after_the_gap() {
        let s = spec("30 2 * * *", "Europe/Berlin");
        assert_eq!(s.dst_rule(), DstRule::OncePerLocalTime);
        // 02:30 on 2024-03-31 does not exist: it fires at 03:00 CEST, 01:00 UTC.
        assert_eq!(
            firings("30 2 * * *", "Europe/Berlin", "2024-03-29T12:00:00", 3),
            ["2024-03-30T01:30:00", "2024-03-31T01:00:00", "2024-04-01T00:30:00"]
        );
        // Two missing local times of one gap are one firing.
        assert_eq!(
            firings("0,30 2 * * *", "Europe/Berlin", "2024-03-30T12:00:00", 3),
            ["2024-03-31T01:00:00", "2024-04-01T00:00:00", "2024-04-01T00:30:00"]
        );
        // A missing 02:00 and the real 03:00 fall on one instant: one firing.
        assert_eq!(
            firings("0 2,3 * * *", "Europe/Berlin", "2024-03-30T12:00:00", 3),
            ["2024-03-31T01:00:00", "2024-04-01T00:00:00", "2024-04-01T01:00:00"]
        );
        // Every minute of the missing hour: one firing, at the end of the gap.
        assert_eq!(
            firings("* 2 * * *", "Europe/Berlin", "2024-03-31T00:00:00", 2),
            ["2024-03-31T01:00:00", "2024-04-01T00:00:00"]
        );
        // The gap end is strictly after its own instant, so asking from it moves on.
        assert_eq!(s.next_after(utc("2024-03-31T01:00:00")), Some(utc("2024-04-01T00:30:00")));
    }

    #[test]
    fn berlin_fall_back_fires_a_repeated_local_time_once_at_its_first_occurrence() {
        // 02:30 happens at 00:30 UTC (CEST) and 01:30 UTC (CET): only the first fires.
        assert_eq!(
            firings("30 2 * * *", "Europe/Berlin", "2024-10-26T12:00:00", 2),
            ["2024-10-27T00:30:00", "2024-10-28T01:30:00"]
        );
        assert_eq!(
            firings("0,30 2 * * *", "Europe/Berlin", "2024-10-26T12:00:00", 3),
            ["2024-10-27T00:00:00", "2024-10-27T00:30:00", "2024-10-28T01:00:00"]
        );
        // Asked from inside the second occurrence, the repeated times are behind.
        let s = spec("30 2 * * *", "Europe/Berlin");
        assert_eq!(s.next_after(utc("2024-10-27T01:10:00")), Some(utc("2024-10-28T01:30:00")));
        assert_eq!(s.next_after(utc("2024-10-27T00:30:00")), Some(utc("2024-10-28T01:30:00")));
        let every_second = spec("* * 2 * * *", "Europe/Berlin");
        assert_eq!(every_second.next_after(utc("2024-10-27T00:59:59")), Some(utc("2024-10-28T01:00:00")));
        assert_eq!(every_second.next_after(utc("2024-10-27T01:00:00")), Some(utc("2024-10-28T01:00:00")));
        assert_eq!(every_second.next_after(utc("2024-10-27T01:30:00")), Some(utc("2024-10-28T01:00:00")));
        // A restricted hour outside the change is not affected.
        assert_eq!(
            firings("0 */2 * * *", "Europe/Berlin", "2024-10-26T21:30:00", 3),
            ["2024-10-26T22:00:00", "2024-10-27T00:00:00", "2024-10-27T03:00:00"]
        );
    }

    #[test]
    fn wildcard_hours_follow_elapsed_time_through_both_changes() {
        let s = spec("*/15 * * * *", "Europe/Berlin");
        assert_eq!(s.dst_rule(), DstRule::Elapsed);
        assert_eq!(spec("0 0-23 * * *", "UTC").dst_rule(), DstRule::Elapsed);
        assert_eq!(spec("@hourly", "UTC").dst_rule(), DstRule::Elapsed);
        assert_eq!(spec("@daily", "UTC").dst_rule(), DstRule::OncePerLocalTime);
        for (from, to) in
            [("2024-03-30T22:00:00", "2024-03-31T04:00:00"), ("2024-10-26T22:00:00", "2024-10-27T04:00:00")]
        {
            let got: Vec<i64> = s.preview(utc(from) - 1, 1000).into_iter().take_while(|t| *t <= utc(to)).collect();
            let want: Vec<i64> = (0..).map(|i| utc(from) + i * 15 * 60_000).take_while(|t| *t <= utc(to)).collect();
            assert_eq!(got, want, "every 15 real minutes from {from}");
        }
        // Hourly in the repeated hour: 02:00 CEST and 02:00 CET both fire, an hour apart.
        assert_eq!(
            firings("0 * * * *", "Europe/Berlin", "2024-10-26T23:30:00", 3),
            ["2024-10-27T00:00:00", "2024-10-27T01:00:00", "2024-10-27T02:00:00"]
        );
        // From inside the first occurrence, the second occurrence comes next.
        assert_eq!(
            spec("0 * * * *", "Europe/Berlin").next_after(utc("2024-10-27T00:30:00")),
            Some(utc("2024-10-27T01:00:00"))
        );
    }

    #[test]
    fn new_york_changes() {
        // 2024-03-10: 02:00 EST jumps to 03:00 EDT at 07:00 UTC.
        assert_eq!(
            firings("30 2 * * *", "America/New_York", "2024-03-09T12:00:00", 3),
            ["2024-03-10T07:00:00", "2024-03-11T06:30:00", "2024-03-12T06:30:00"]
        );
        // 2024-11-03: 02:00 EDT goes back to 01:00 EST at 06:00 UTC; 01:30 happens twice.
        assert_eq!(
            firings("30 1 * * *", "America/New_York", "2024-11-02T12:00:00", 2),
            ["2024-11-03T05:30:00", "2024-11-04T06:30:00"]
        );
        assert_eq!(
            firings("*/30 * * * *", "America/New_York", "2024-11-03T04:50:00", 5),
            [
                "2024-11-03T05:00:00",
                "2024-11-03T05:30:00",
                "2024-11-03T06:00:00",
                "2024-11-03T06:30:00",
                "2024-11-03T07:00:00"
            ]
        );
    }

    #[test]
    fn far_times_and_the_end_of_the_calendar() {
        let s = spec("0 0 1 1 *", "UTC");
        assert_eq!(s.next_after(i64::MAX), None);
        assert_eq!(s.next_after(i64::MIN), None);
        // croner searches up to the year 5000.
        assert_eq!(s.next_after(utc("4999-06-01T00:00:00")), Some(utc("5000-01-01T00:00:00")));
        assert_eq!(s.next_after(utc("5000-06-01T00:00:00")), None);
        assert_eq!(s.preview(utc("4997-06-01T00:00:00"), 10).len(), 3);
        assert_eq!(spec("* * * * * *", "UTC").preview(0, 5000).len(), MAX_PREVIEW);
    }

    #[test]
    fn misfire_and_overlap_names() {
        for p in [Misfire::Skip, Misfire::Once, Misfire::All { max: 5 }] {
            assert_eq!(Misfire::parse(p.as_str(), Some(5)), Ok(p));
        }
        assert_eq!(Misfire::parse("all", None), Ok(Misfire::All { max: MAX_MISFIRE_ALL }));
        assert_eq!(
            Misfire::parse("all", Some(MAX_MISFIRE_ALL + 1)),
            Err(ScheduleError::MisfireMax(MAX_MISFIRE_ALL + 1))
        );
        for o in [Overlap::Allow, Overlap::Skip, Overlap::Queue, Overlap::Replace] {
            assert_eq!(Overlap::parse(o.as_str()), Ok(o));
            assert_eq!(o.as_str().parse::<Overlap>(), Ok(o));
            assert_eq!(on_overlap(o, false), OverlapDecision::Start);
        }
        assert_eq!(on_overlap(Overlap::Allow, true), OverlapDecision::Start);
        assert_eq!(on_overlap(Overlap::Skip, true), OverlapDecision::Skip);
        assert_eq!(on_overlap(Overlap::Queue, true), OverlapDecision::QueueAfterPrevious);
        assert_eq!(on_overlap(Overlap::Replace, true), OverlapDecision::CancelPreviousThenStart);
        assert_eq!(Overlap::default(), Overlap::Allow);
        assert_eq!(SkipReason::Misfire.as_str(), "misfire");
    }

    #[test]
    fn firing_params_fill_the_firing_time_and_leave_the_rest() {
        let template: BTreeMap<String, String> = [
            ("at", "{fire_time}"),
            ("day", "{fire_date}"),
            ("unix", "{fire_unix}"),
            ("ms", "{fire_unix_ms}"),
            ("mixed", "load {fire_date} for {region} {{fire_date}} {{{fire_date}}} }} {"),
            ("plain", "nothing"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // 2024-03-31T01:00:00Z is 03:00 CEST in Berlin.
        let fire = utc("2024-03-31T01:00:00");
        let p = firing_params(&template, fire, chrono_tz::Europe::Berlin);
        assert_eq!(p["at"], "2024-03-31T03:00:00+02:00");
        assert_eq!(p["day"], "2024-03-31");
        assert_eq!(p["unix"], "1711846800");
        assert_eq!(p["ms"], "1711846800000");
        assert_eq!(p["mixed"], "load 2024-03-31 for {region} {{fire_date}} {{2024-03-31}} }} {");
        assert_eq!(p["plain"], "nothing");
        // The local date, not the UTC one.
        let p = firing_params(&template, utc("2024-03-30T23:30:00"), chrono_tz::Europe::Berlin);
        assert_eq!(p["day"], "2024-03-31");
        assert_eq!(p["at"], "2024-03-31T00:30:00+01:00");
        // Same syntax as the job's own substitution: braces still literal after both passes.
        let vals: BTreeMap<String, String> = [("region".to_owned(), "eu".to_owned())].into();
        let once = firing_params(&[("x".to_owned(), "{region}/{fire_date}/{{x}}".to_owned())].into(), fire, Tz::UTC);
        assert_eq!(crate::job::substitute(&once["x"], &vals).unwrap(), "eu/2024-03-31/{x}");
        let s = spec("0 3 * * *", "Europe/Berlin");
        assert_eq!(s.firing_params(&template, fire)["at"], "2024-03-31T03:00:00+02:00");
    }

    /// Runs `due_firings` at one `now` until the plan is complete, as a node would.
    fn settle(
        spec: &CronSpec,
        last: &mut Option<i64>,
        now: i64,
        threshold: i64,
        policy: Misfire,
    ) -> (Vec<i64>, Vec<i64>) {
        let (mut run, mut skipped) = (Vec::new(), Vec::new());
        for _ in 0..100_000 {
            let plan = due_firings(spec, *last, now, threshold, policy);
            assert!(plan.run.len() + plan.skipped.len() <= MAX_FIRINGS_PER_CALL);
            assert_eq!(plan.complete, plan.next_ms.is_none_or(|n| n > now));
            assert!(plan.skipped.iter().all(|s| s.reason == SkipReason::Misfire));
            let all: BTreeSet<i64> = plan.run.iter().copied().chain(plan.skipped.iter().map(|s| s.fire_ms)).collect();
            assert_eq!(all.len(), plan.run.len() + plan.skipped.len(), "a firing both run and skipped");
            assert!(all.iter().all(|f| *f <= now && last.is_none_or(|l| *f > l)));
            assert!(plan.next_ms.is_none_or(|n| all.last().is_none_or(|l| n > *l)));
            run.extend(&plan.run);
            skipped.extend(plan.skipped.iter().map(|s| s.fire_ms));
            if let Some(l) = plan.last_covered() {
                *last = Some(l);
            } else if last.is_none() {
                // A caller with no firing recorded starts counting from its first `now`.
                *last = Some(now);
            }
            if plan.complete {
                return (run, skipped);
            }
        }
        panic!("due_firings never completed");
    }

    #[test]
    fn misfire_policies_after_a_month_down() {
        let s = spec("* * * * * *", "UTC");
        let t0 = utc("2024-01-01T00:00:00");
        let now = t0 + 30 * 86_400_000 + 500;
        // Skip: a month of every-second firings is many bounded calls, none run but the
        // on-time ones.
        let plan = due_firings(&s, Some(t0), now, 5_000, Misfire::Skip);
        assert_eq!(plan.skipped.len(), MAX_FIRINGS_PER_CALL);
        assert!(plan.run.is_empty() && !plan.complete);
        assert_eq!(plan.next_ms, Some(t0 + 1001 * 1000));
        for (policy, missed_run) in [(Misfire::Once, 1), (Misfire::All { max: 7 }, 7), (Misfire::Skip, 0)] {
            let start = now - 3_600_000;
            let (run, skipped) = settle(&s, &mut Some(start), now, 5_000, policy);
            // On time: the firings at now-5s ..= now (second boundaries): 5 of them.
            let on_time: Vec<i64> = (0..5).map(|i| t0 + 30 * 86_400_000 - 4_000 + i * 1000).collect();
            let missed_runs: Vec<i64> = (0..missed_run).map(|i| on_time[0] - (missed_run - i) * 1000).collect();
            assert_eq!(run, [missed_runs.clone(), on_time].concat(), "{policy:?}");
            assert_eq!(skipped.len() + run.len(), 3600, "{policy:?}");
        }
    }

    #[test]
    fn none_recorded_counts_from_now() {
        let s = spec("*/10 * * * * *", "UTC");
        let now = utc("2024-01-01T00:00:00");
        let plan = due_firings(&s, None, now, 60_000, Misfire::All { max: 10 });
        assert_eq!(plan, Plan { run: vec![], skipped: vec![], next_ms: Some(now + 10_000), complete: true });
        let plan = due_firings(&s, Some(now), now + 25_000, 60_000, Misfire::Skip);
        assert_eq!(plan.run, [now + 10_000, now + 20_000]);
        assert_eq!(plan.next_ms, Some(now + 30_000));
        // A `now` behind the last firing (a store failover to a lagging clock): nothing due.
        let plan = due_firings(&s, Some(now), now - 60_000, 0, Misfire::Once);
        assert!(plan.run.is_empty() && plan.skipped.is_empty() && plan.complete);
        assert_eq!(plan.next_ms, Some(now + 10_000));
    }

    // ---- property tests ----

    const ZONES: [&str; 7] = [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Antarctica/Troll",
        "Pacific/Chatham",
        "Pacific/Apia",
    ];

    fn expr_strategy() -> impl Strategy<Value = String> {
        let sec = prop::sample::select(vec!["", "0 ", "30 ", "*/20 ", "0,30 ", "*/7 "]);
        let min = prop::sample::select(vec!["0", "30", "*/15", "*/7", "0,30", "45", "*", "59"]);
        let hour = prop::sample::select(vec!["*", "2", "1-3", "*/2", "0-23", "1,2", "3", "0", "*/5", "2-4/2"]);
        let day = prop::sample::select(vec!["* * *", "* * *", "* * 0", "1-7 * *", "* 3,10 *", "L * *"]);
        (sec, min, hour, day).prop_map(|(s, m, h, d)| format!("{s}{m} {h} {d}"))
    }

    /// UTC instants where some zone's offset changes, found by scanning: every change in
    /// 2011 (Samoa skipped 2011-12-30) and 2024.
    fn transitions(tz: Tz) -> Vec<i64> {
        let offset = |ms: i64| {
            let at = DateTime::from_timestamp_millis(ms).unwrap().naive_utc();
            tz.offset_from_utc_datetime(&at).fix().local_minus_utc()
        };
        let mut out = Vec::new();
        for (from, to) in
            [("2011-01-01T00:00:00", "2012-01-01T00:00:00"), ("2024-01-01T00:00:00", "2025-01-01T00:00:00")]
        {
            let mut t = utc(from);
            while t < utc(to) {
                if offset(t) != offset(t + 3_600_000) {
                    let (mut lo, mut hi) = (t, t + 3_600_000);
                    while hi - lo > 1000 {
                        let mid = lo + (hi - lo) / 2;
                        if offset(mid) == offset(lo) {
                            lo = mid
                        } else {
                            hi = mid
                        }
                    }
                    out.push(hi);
                }
                t += 3_600_000;
            }
        }
        out
    }

    /// Times near a DST change of `tz` (or anywhere for UTC), picked by `pick`.
    fn near_change(tz: Tz, pick: (usize, i64)) -> i64 {
        let changes = transitions(tz);
        if changes.is_empty() {
            return utc("2024-06-01T00:00:00") + pick.1 * 7;
        }
        changes[pick.0 % changes.len()] + pick.1
    }

    /// Brute force: every firing in `(from, to]`, straight from the definitions in the
    /// module documentation, second by second.
    fn oracle(s: &CronSpec, from: i64, to: i64) -> Vec<i64> {
        let tz = s.tz();
        let local = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap().with_timezone(&tz).naive_local();
        let matches = |l: &NaiveDateTime| s.cron.is_time_matching(l).unwrap();
        let first_second = from.div_euclid(1000) * 1000 + 1000;
        match s.dst_rule() {
            DstRule::Elapsed => (0..)
                .map(|i| first_second + i * 1000)
                .take_while(|u| *u <= to)
                .filter(|u| matches(&local(*u)))
                .collect(),
            DstRule::OncePerLocalTime => {
                // Clock jumps near the window: (instant, local before it, local at it).
                let margin = 30 * 3_600_000;
                let jumps: Vec<(i64, NaiveDateTime, NaiveDateTime)> = transitions(tz)
                    .into_iter()
                    .filter(|j| *j > from - margin && *j < to + margin)
                    .map(|j| (j, local(j - 1000), local(j)))
                    .collect();
                let mut out = BTreeSet::new();
                let mut l = local(from) - TimeDelta::hours(26);
                let end = local(to) + TimeDelta::hours(26);
                while l <= end {
                    if matches(&l) {
                        let at = match tz.from_local_datetime(&l) {
                            LocalResult::Single(at) => at.timestamp_millis(),
                            LocalResult::Ambiguous(first, _) => first.timestamp_millis(),
                            LocalResult::None => {
                                jumps.iter().find(|(_, before, after)| *before < l && l < *after).unwrap().0
                            }
                        };
                        if at > from && at <= to {
                            out.insert(at);
                        }
                        l += TimeDelta::seconds(1);
                    } else {
                        // Skip ahead to the next matching local time.
                        l = match s.cron.find_next_occurrence(&l, false) {
                            Ok(next) => next,
                            Err(_) => break,
                        };
                    }
                }
                out.into_iter().collect()
            }
        }
    }

    /// Every firing in `(from, to]`, by iterating `next_after`.
    fn firings_until(s: &CronSpec, from: i64, to: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = from;
        while let Some(f) = s.next_after(t).filter(|f| *f <= to) {
            out.push(f);
            t = f;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn next_after_matches_brute_force_near_dst_changes(
            expr in expr_strategy(),
            zone in prop::sample::select(ZONES.to_vec()),
            pick in (0usize..64, -3 * 3_600_000i64..3 * 3_600_000),
        ) {
            let s = spec(&expr, zone);
            let from = near_change(s.tz(), pick);
            let to = from + 5 * 3_600_000;
            let want = oracle(&s, from, to);
            let got = firings_until(&s, from, to);
            let differ = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
            prop_assert!(
                got == want,
                "{} in {} from {}: {} firings, brute force {}; first difference at index {}: {:?} vs {:?}",
                expr, zone, from, got.len(), want.len(), differ, got.get(differ), want.get(differ)
            );
        }

        #[test]
        fn next_after_is_strictly_after_and_preview_iterates_it(
            expr in expr_strategy(),
            zone in prop::sample::select(ZONES.to_vec()),
            near in any::<bool>(),
            pick in (0usize..64, -2 * 86_400_000i64..2 * 86_400_000),
            anywhere in -2_000_000_000_000i64..4_000_000_000_000,
            n in 0usize..40,
        ) {
            let s = spec(&expr, zone);
            let from = if near { near_change(s.tz(), pick) } else { anywhere };
            let preview = s.preview(from, n);
            prop_assert_eq!(preview.len(), n);
            let mut t = from;
            for p in preview {
                let next = s.next_after(t);
                prop_assert_eq!(next, Some(p));
                prop_assert!(p > t);
                // Nothing between two consecutive firings: asking from just before the
                // second gives the second.
                prop_assert_eq!(s.next_after(p - 1), Some(p));
                t = p;
            }
        }

        /// A node calls `due_firings` at increasing `now`s, with outages, and records what
        /// each plan says: every firing time in the window is run or skipped exactly once.
        #[test]
        fn due_firings_cover_every_firing_exactly_once(
            expr in prop::sample::select(vec!["* * * * * *", "*/7 * * * * *", "0 * * * * *", "*/15 * * * *", "30 2 * * *", "0 * * * *"]),
            zone in prop::sample::select(vec!["UTC", "Europe/Berlin"]),
            start in -3 * 3_600_000i64..3 * 3_600_000,
            steps in prop::collection::vec(prop_oneof![8 => 0i64..5_000, 2 => 0i64..600_000, 1 => 0i64..4 * 3_600_000], 1..25),
            threshold in prop::sample::select(vec![0i64, 1_000, 60_000, 3_600_000]),
            policy in prop_oneof![Just(Misfire::Skip), Just(Misfire::Once), (1u32..20).prop_map(|max| Misfire::All { max })],
            known_start in any::<bool>(),
        ) {
            let s = spec(expr, zone);
            let t0 = utc("2024-10-27T01:00:00") + start;
            let mut last = known_start.then_some(t0);
            let mut now = t0;
            let first_step = steps[0];
            let mut seen = BTreeMap::new();
            for step in steps {
                now += step;
                let (run, skipped) = settle(&s, &mut last, now, threshold, policy);
                for f in run.iter().chain(&skipped) {
                    prop_assert!(seen.insert(*f, now).is_none(), "firing {} handed out twice", f);
                }
            }
            // With nothing recorded, the node counts from its first `now`.
            let want = firings_until(&s, if known_start { t0 } else { t0 + first_step }, now);
            prop_assert_eq!(seen.keys().copied().collect::<Vec<_>>(), want);
        }

        /// One outage, then one `now`: the policy is followed exactly.
        #[test]
        fn misfire_policies_hold_exactly(
            expr in prop::sample::select(vec!["* * * * * *", "*/7 * * * * *", "*/15 * * * *", "0 * * * *"]),
            down in 0i64..4 * 3_600_000,
            threshold in 0i64..600_000,
            policy in prop_oneof![Just(Misfire::Skip), Just(Misfire::Once), (1u32..50).prop_map(|max| Misfire::All { max })],
        ) {
            let s = spec(expr, "Europe/Berlin");
            let t0 = utc("2024-03-31T00:00:00");
            let now = t0 + down;
            let (run, skipped) = settle(&s, &mut Some(t0), now, threshold, policy);
            let all = firings_until(&s, t0, now);
            let (missed, on_time): (Vec<i64>, Vec<i64>) = all.iter().partition(|f| now - **f > threshold);
            let keep = match policy {
                Misfire::Skip => 0,
                Misfire::Once => 1,
                Misfire::All { max } => max as usize,
            };
            let ran_missed = &missed[missed.len().saturating_sub(keep)..];
            prop_assert_eq!(&run, &[ran_missed, &on_time].concat());
            prop_assert_eq!(&skipped, &missed[..missed.len() - ran_missed.len()]);
        }

        #[test]
        fn parse_never_panics(expr in "[0-9*/,LW#?@a-zA-Z -]{0,30}", tz in "[A-Za-z/_]{0,20}") {
            let _ = CronSpec::parse(&expr, &tz);
        }
    }
}
