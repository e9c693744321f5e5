//! shoal's cron expressions against an independent implementation: Python's `croniter`
//! (pinned, installed by `scripts/install-test-deps.sh`), on several hundred generated
//! expressions in four zones.
//!
//! # Why croniter, and in which mode
//!
//! shoal computes firing times with the `croner` crate, so no crate built on croner can be
//! the reference. croniter is a separate code base (Python, its own parser and search)
//! that can follow Vixie cron exactly: with `day_or=True` it combines two restricted day
//! fields by "or", and with `implement_cron_bug=True` it combines them by "and" as soon as
//! either field's text starts with `*` — Vixie's `DOM_STAR`/`DOW_STAR` flags, set from the field's first character, and
//! its test `(DOM_STAR || DOW_STAR) ? dow && dom : dow || dom`. That is the rule shoal
//! documents (module `schedule`, README "Schedules and listeners").
//!
//! One known difference of croniter from Vixie cron is kept out of the generated
//! expressions, on purpose: croniter reads a day field that lists every value (`1-31`,
//! `0-6`) as `*` when the *other* field contains a `*` anywhere, so with `1,*/3` (which
//! does not start with `*`, hence is restricted in Vixie cron) it wrongly chooses "and".
//! The generator therefore puts a `*` only at the start of a field. shoal's unit tests
//! cover `1,*/10` against a brute-force rule instead.
//!
//! # Time zones
//!
//! croniter's own handling of daylight saving time differs from shoal's documented rules
//! (README, module `schedule`: a missing local time fires at the end of the gap when the
//! hour field is restricted, and so on), so croniter is asked only for what it is a
//! reference of: the local wall-clock times that match, computed in naive local time.
//! The test then maps each of them to instants by shoal's documented rule, using the zone
//! database (chrono-tz) directly and not shoal's search:
//!
//! - hour field covering every hour (croniter's expanded hour field is `*`): a local time
//!   fires at each instant that has it: none in a gap, both in a fold;
//! - any other hour field: once: a unique local time at its instant, a repeated one at its
//!   first occurrence, a missing one at the first instant after its gap.
//!
//! Nothing is left out of the comparison: every firing shoal gives in the window (from
//! the start to its twentieth firing, or 2090 for the rare expressions that fire less
//! than 20 times before then: croniter stops at 2099) must be one that croniter's local
//! times map to, and every one that croniter's local times map to in that window must be
//! one shoal gives. The starts lie close before the zones' 2024 clock changes (and in
//! June), so many windows cross a gap or a fold; the test asserts that they do.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone};
use shoal_core::schedule::{CronSpec, DstRule, ScheduleError, Tz};

const EXPRESSIONS: usize = 400;
const FIRINGS: usize = 20;
const ZONES: [&str; 4] = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"];
/// croniter searches up to 2099; windows end here at the latest.
const CUTOFF: &str = "2090-01-01T00:00:00";
const FMT: &str = "%Y-%m-%dT%H:%M:%S";

/// The reference: reads one JSON case a line, answers one JSON line each.
const CRONITER: &str = r#"
import json, sys
from datetime import datetime
from croniter import croniter, CroniterBadDateError

FMT = "%Y-%m-%dT%H:%M:%S"
for line in sys.stdin:
    case = json.loads(line)
    it = croniter(case["expr"], datetime.strptime(case["after"], FMT), ret_type=datetime,
                  day_or=True, implement_cron_bug=True, second_at_beginning=case["six"])
    hour = it.expanded[1]  # croniter keeps seconds last
    until = datetime.strptime(case["until"], FMT)
    times, ended = [], False
    while len(times) <= case["cap"]:
        try:
            t = it.get_next()
        except CroniterBadDateError:
            ended = True
            break
        if t > until:
            break
        times.append(t.strftime(FMT))
    print(json.dumps({"times": times, "ended": ended, "every_hour": hour == ["*"]}), flush=True)
"#;

/// A small seeded generator (splitmix64): the same expressions on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() as usize % items.len()]
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.range(1, 100) <= percent
    }
}

/// One element of a list: a value, a range or a stepped range, within `lo..=hi`.
fn element(rng: &mut Rng, lo: u32, hi: u32) -> String {
    match rng.range(0, 2) {
        0 => rng.range(lo, hi).to_string(),
        1 => {
            let a = rng.range(lo, hi - 1);
            format!("{a}-{}", rng.range(a + 1, hi))
        }
        _ => {
            let a = rng.range(lo, hi - 1);
            let b = rng.range(a + 1, hi);
            format!("{a}-{b}/{}", rng.range(1, (b - a).max(1)))
        }
    }
}

/// A field over `lo..=hi`: `*`, `*/n`, or a list of one to three elements, which may
/// start (only start) with `*/n`. `star` is the chance of a bare `*`, in percent.
fn field(rng: &mut Rng, lo: u32, hi: u32, star: u32, max_step: u32) -> String {
    if rng.chance(star) {
        return "*".to_owned();
    }
    if rng.chance(20) {
        return format!("*/{}", rng.range(1, max_step));
    }
    let mut parts: Vec<String> = (0..rng.range(1, 3)).map(|_| element(rng, lo, hi)).collect();
    if rng.chance(10) {
        parts.insert(0, format!("*/{}", rng.range(2, max_step)));
    }
    parts.join(",")
}

fn expression(rng: &mut Rng) -> String {
    let second = if rng.chance(15) {
        Some(rng.pick(&["0", "30", "0,30", "*/20", "15-45/15", "10", "*/30"]).to_owned())
    } else {
        None
    };
    let minute =
        if rng.chance(15) { rng.pick(&["0", "30", "0,30", "*/15"]).to_owned() } else { field(rng, 0, 59, 25, 30) };
    // Hours around the clock changes (1-3 local) often.
    let hour = match rng.range(0, 9) {
        0..=2 => rng.pick(&["1", "2", "3", "1-3", "2,3", "0-3/2", "2-23/3"]).to_owned(),
        _ => field(rng, 0, 23, 35, 12),
    };
    let dom = if rng.chance(10) {
        rng.pick(&["1-31", "1-31/2", "*/1", "*/2", "13", "29-31"]).to_owned()
    } else {
        field(rng, 1, 31, 35, 10)
    };
    let month = if rng.chance(10) {
        rng.pick(&["JAN", "MAR-OCT", "FEB,NOV", "*/3"]).to_owned()
    } else {
        field(rng, 1, 12, 55, 5)
    };
    let dow = if rng.chance(15) {
        rng.pick(&["MON-FRI", "SUN", "SAT,SUN", "0-6", "5-7", "*/1", "*/2", "1-5/2", "7"]).to_owned()
    } else {
        field(rng, 0, 7, 35, 3)
    };
    let five = format!("{minute} {hour} {dom} {month} {dow}");
    match second {
        Some(s) => format!("{s} {five}"),
        None => five,
    }
}

fn utc(s: &str) -> i64 {
    NaiveDateTime::parse_from_str(s, FMT).unwrap().and_utc().timestamp_millis()
}

fn local(tz: Tz, ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(ms).unwrap().with_timezone(&tz).naive_local()
}

fn offset_ms(tz: Tz, ms: i64) -> i64 {
    let at = DateTime::from_timestamp_millis(ms).unwrap().naive_utc();
    i64::from(tz.offset_from_utc_datetime(&at).fix().local_minus_utc()) * 1000
}

/// The first instant in `(lo, hi]` whose offset differs from `lo`'s.
fn change_between(tz: Tz, mut lo: i64, mut hi: i64) -> i64 {
    let before = offset_ms(tz, lo);
    assert_ne!(offset_ms(tz, hi), before, "no offset change in ({lo}, {hi}] in {}", tz.name());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_ms(tz, mid) == before {
            lo = mid
        } else {
            hi = mid
        }
    }
    hi
}

/// Every offset change of `tz` in `(from, to]`: a daily scan, then bisection (these
/// zones change at most twice a year).
fn changes(tz: Tz, from: i64, to: i64) -> Vec<i64> {
    const DAY: i64 = 86_400_000;
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let next = (t + DAY).min(to);
        if offset_ms(tz, t) != offset_ms(tz, next) {
            out.push(change_between(tz, t, next));
        }
        t = next;
    }
    out
}

/// The instants at which a matching local time fires, by the rule in the module
/// documentation.
fn instants(tz: Tz, rule: DstRule, l: &NaiveDateTime) -> Vec<i64> {
    match (tz.from_local_datetime(l), rule) {
        (LocalResult::Single(t), _) => vec![t.timestamp_millis()],
        (LocalResult::Ambiguous(a, b), DstRule::Elapsed) => vec![a.timestamp_millis(), b.timestamp_millis()],
        (LocalResult::Ambiguous(a, _), DstRule::OncePerLocalTime) => vec![a.timestamp_millis()],
        (LocalResult::None, DstRule::Elapsed) => vec![],
        (LocalResult::None, DstRule::OncePerLocalTime) => {
            // Read with the offset after the gap, `l` is an instant before the change;
            // with the one before it, one after.
            let naive = l.and_utc().timestamp_millis();
            let day = 86_400_000;
            let (before, after) = (offset_ms(tz, naive - day), offset_ms(tz, naive + day));
            vec![change_between(tz, naive - after, naive - before)]
        }
    }
}

struct Case {
    expr: String,
    zone: &'static str,
    start: i64,
    /// shoal's firings in the window.
    got: Vec<i64>,
    /// The window's end.
    bound: i64,
    /// None: shoal refused the expression as never firing.
    spec: Option<CronSpec>,
}

fn starts(tz: Tz) -> Vec<i64> {
    let mut anchors = changes(tz, utc("2024-01-01T00:00:00"), utc("2025-01-01T00:00:00"));
    anchors.push(utc("2024-06-15T00:00:00"));
    anchors
}

fn python() -> String {
    std::env::var("SHOAL_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn run_croniter(input: &str) -> Vec<serde_json::Value> {
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", CRONITER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{python}` ({e}); run scripts/install-test-deps.sh"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "croniter failed ({}); run scripts/install-test-deps.sh to install it:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn day_fields_and_firing_times_match_croniter_in_vixie_mode() {
    let mut rng = Rng(0x50a1_2024);
    let cutoff = utc(CUTOFF);
    let mut cases = Vec::new();
    for _ in 0..EXPRESSIONS {
        let expr = expression(&mut rng);
        for zone in ZONES {
            let tz: Tz = zone.parse().unwrap();
            let anchors = starts(tz);
            let anchor = anchors[rng.next() as usize % anchors.len()];
            let before = [0, 60_000, 20 * 60_000, 2 * 3_600_000, 86_400_000, 20 * 86_400_000];
            let mut start = anchor - before[rng.next() as usize % before.len()] - rng.range(0, 3599) as i64 * 1000;
            // Never inside a repeated hour: croniter is asked from the start's local time on.
            while !matches!(tz.from_local_datetime(&local(tz, start)), LocalResult::Single(_)) {
                start -= 3_600_000;
            }
            let (spec, got, bound) = match CronSpec::parse(&expr, zone) {
                Ok(spec) => {
                    let all = spec.preview(start, FIRINGS);
                    let bound = all.last().copied().unwrap_or(cutoff).min(cutoff);
                    let got = all.into_iter().filter(|t| *t <= bound).collect();
                    (Some(spec), got, bound)
                }
                Err(ScheduleError::NeverFires(_)) => (None, vec![], start + 40 * 365 * 86_400_000),
                Err(e) => panic!("generated `{expr}` was refused: {e}"),
            };
            cases.push(Case { expr: expr.clone(), zone, start, got, bound, spec });
        }
    }

    // croniter's local times up to the latest local time of the window (the end of a fold
    // inside it can be later than the window end's own local time).
    let mut input = String::new();
    for c in &cases {
        let tz: Tz = c.zone.parse().unwrap();
        let mut until = local(tz, c.bound);
        for change in changes(tz, c.start, c.bound) {
            until = until.max(local(tz, change - 1000));
        }
        let case = serde_json::json!({
            "expr": c.expr,
            "six": c.expr.split_whitespace().count() == 6,
            "after": local(tz, c.start).format(FMT).to_string(),
            "until": until.format(FMT).to_string(),
            "cap": 20_000,
        });
        input.push_str(&case.to_string());
        input.push('\n');
    }
    let answers = run_croniter(&input);
    assert_eq!(answers.len(), cases.len());

    let (mut compared, mut never, mut across_changes) = (0, 0, 0);
    let mut failures = Vec::new();
    for (c, answer) in cases.iter().zip(&answers) {
        let tz: Tz = c.zone.parse().unwrap();
        let times: Vec<NaiveDateTime> = answer["times"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| NaiveDateTime::parse_from_str(t.as_str().unwrap(), FMT).unwrap())
            .collect();
        assert!(times.len() <= 20_000, "`{}`: croniter hit the cap", c.expr);
        let Some(spec) = &c.spec else {
            never += 1;
            if !times.is_empty() {
                failures
                    .push(format!("`{}`: shoal refuses it as never firing, croniter fires at {}", c.expr, times[0]));
            }
            continue;
        };
        let every_hour = answer["every_hour"].as_bool().unwrap();
        if every_hour != (spec.dst_rule() == DstRule::Elapsed) {
            failures.push(format!("`{}`: croniter every_hour {every_hour}, shoal {:?}", c.expr, spec.dst_rule()));
            continue;
        }
        let want: Vec<i64> = times
            .iter()
            .flat_map(|l| instants(tz, spec.dst_rule(), l))
            .filter(|t| *t > c.start && *t <= c.bound)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !changes(tz, c.start, c.bound).is_empty() {
            across_changes += 1;
        }
        if want != c.got {
            let show = |v: &[i64]| v.iter().map(|t| spec.format_local(*t)).collect::<Vec<_>>().join(" ");
            failures.push(format!(
                "`{}` in {} after {}:\n  shoal:    {}\n  croniter: {}",
                c.expr,
                c.zone,
                spec.format_local(c.start),
                show(&c.got),
                show(&want)
            ));
        } else {
            compared += want.len();
        }
    }
    eprintln!(
        "{} cases ({EXPRESSIONS} expressions x {} zones): {compared} firing times equal, {never} never firing in both, {across_changes} windows across a clock change, {} differ",
        cases.len(),
        ZONES.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ; the first ones:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(8)].join("\n")
    );
    // The comparison really covered what it claims.
    assert!(compared >= cases.len() * FIRINGS * 9 / 10, "only {compared} firing times compared");
    assert!(across_changes >= cases.len() / 5, "only {across_changes} windows cross a clock change");
}
