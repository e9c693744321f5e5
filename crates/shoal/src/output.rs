//! How the client commands show what they get: tables of typed rows (comfy-table), `key: value`
//! lines, the API's JSON, and progress on stderr (indicatif).
//!
//! What scripts read stays plain: a table on a terminal gets rounded box lines, but piped or
//! redirected it is bare columns two spaces apart, as `awk` and `cut` expect. Progress appears
//! only on a terminal, and never with `--json`: it draws on stderr, which a terminal shows
//! beside stdout, so a bar is drawn only while nothing else writes there.

use comfy_table::{presets, CellAlignment, ColumnConstraint, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Writes to stdout, ignoring a closed pipe (`shoal ps | head -1`) instead of panicking as
/// `println!` would.
pub(crate) fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Prints a typed answer as the server sent it (the wire types serialize to the same JSON).
pub(crate) fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(pretty) => emit(&format!("{pretty}\n")),
        Err(e) => eprintln!("error: cannot print the answer as JSON: {e}"),
    }
}

/// Prints an answer: as the API's JSON with `--json`, else as the text `text` makes of it.
pub(crate) fn print_answer<T: Serialize>(answer: &T, json: bool, text: impl FnOnce(&T) -> String) {
    if json {
        print_json(answer);
    } else {
        emit(&text(answer));
    }
}

// ---- tables ----

/// A typed value shown as one row of a table.
pub(crate) trait Row {
    const HEADERS: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

/// The table of `rows`, in the style stdout calls for.
pub(crate) fn rows_table<R: Row>(rows: &[R]) -> String {
    table(R::HEADERS, &rows.iter().map(Row::cells).collect::<Vec<_>>())
}

/// A table in the style stdout calls for: boxed on a terminal, bare columns otherwise.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    render_table(headers, rows, std::io::stdout().is_terminal())
}

/// `boxed`: rounded box lines for a person at a terminal. Otherwise plain aligned columns, two
/// spaces apart, the last column not padded: the text scripts and tests read.
pub(crate) fn render_table(headers: &[&str], rows: &[Vec<String>], boxed: bool) -> String {
    let mut t = Table::new();
    if boxed {
        t.load_preset(presets::UTF8_FULL_CONDENSED).apply_modifier(comfy_table::modifiers::UTF8_ROUND_CORNERS);
    } else {
        t.load_preset(presets::NOTHING);
    }
    t.set_header(headers.iter().copied());
    for row in rows {
        t.add_row(row.iter().map(String::as_str));
    }
    if !boxed {
        for column in t.column_iter_mut() {
            column.set_padding((0, 2));
            column.set_cell_alignment(CellAlignment::Left);
            // Never wrapped: a row is one line for `grep`.
            column.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
    let mut text = t.trim_fmt();
    text.push('\n');
    text
}

/// `key: value` lines, keys aligned, in the order given.
pub(crate) fn key_values(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!("{:width$} {v}\n", format!("{k}:")));
    }
    out
}

// ---- cells ----

/// How a wire enum is spelled in the API (`timed_out`, `node_died`).
pub(crate) fn name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// An optional value as a cell: `-` when absent.
pub(crate) fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// An optional wire enum as a cell: its API name, `-` when absent.
pub(crate) fn name_or_dash(value: Option<&impl Serialize>) -> String {
    value.map_or_else(|| "-".into(), name)
}

/// A list as words.
pub(crate) fn words<T: AsRef<str>>(items: &[T]) -> String {
    items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
}

/// A map as `k=v` pairs, `-` when empty.
pub(crate) fn pairs(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

pub(crate) fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.into()
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts a cell to `max` characters, marking the cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An RFC 3339 time to the second: `2024-05-01T10:00:00.123Z` becomes `2024-05-01T10:00:00Z`;
/// `-` for none.
pub(crate) fn short_time(time: Option<&str>) -> String {
    match time {
        Some(t) => match t.split_once('.') {
            Some((seconds, rest)) if rest.ends_with('Z') => format!("{seconds}Z"),
            _ => t.to_owned(),
        },
        None => "-".into(),
    }
}

/// A duration in milliseconds, briefly: `850ms`, `4.2s`, `3m20s`, `2h05m`.
pub(crate) fn fmt_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

// ---- progress ----

/// Whether progress may be drawn: stderr is a terminal and the output is not JSON.
pub(crate) fn progress_shown(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

fn target(shown: bool) -> ProgressDrawTarget {
    if shown {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A spinner on stderr that says what is awaited; hidden unless `shown`.
pub(crate) fn spinner(shown: bool, message: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target(shown));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message);
    if shown {
        bar.enable_steady_tick(Duration::from_millis(100));
    }
    bar
}

/// A byte count on stderr for a transfer of `len` bytes (a spinner when the length is not
/// known); hidden unless `shown`.
pub(crate) fn transfer(shown: bool, len: Option<u64>, message: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(len, target(shown));
    let template = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}"
    } else {
        "{spinner} {msg} {bytes} {binary_bytes_per_sec}"
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(message);
    if shown && len.is_none() {
        bar.enable_steady_tick(Duration::from_millis(100));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_clip() {
        let rows = [vec!["abc".into(), "running".into()], vec!["a".into(), "x".into()]];
        let t = render_table(&["ID", "STATE"], &rows, false);
        assert_eq!(t, "ID   STATE\nabc  running\na    x\n");
        // A wide cell does not wrap, however long.
        let long = "x".repeat(300);
        let t = render_table(&["A", "B"], &[vec![long.clone(), "y".into()]], false);
        assert_eq!(t, format!("A{}  B\n{long}  y\n", " ".repeat(299)));
        assert_eq!(render_table(&["ID"], &[], false), "ID\n");
        // On a terminal: the same cells, boxed.
        let boxed = render_table(&["ID", "STATE"], &rows, true);
        assert!(boxed.starts_with('╭') && boxed.contains("│ abc ┆ running │"), "{boxed}");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("a\nb", 10), "a b");
    }

    #[test]
    fn values_format_briefly() {
        assert_eq!(short_time(Some("2024-05-01T10:00:00.123Z")), "2024-05-01T10:00:00Z");
        assert_eq!(short_time(None), "-");
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(4200), "4.2s");
        assert_eq!(fmt_ms(200_000), "3m20s");
        assert_eq!(words(&["echo", "hi"]), "echo hi");
        let params = BTreeMap::from([("day".to_owned(), "mon".to_owned()), ("n".to_owned(), "3".to_owned())]);
        assert_eq!(pairs(&params), "day=mon n=3");
        assert_eq!(pairs(&BTreeMap::new()), "-");
        assert_eq!(name(&shoal_wire::ExecutionState::TimedOut), "timed_out");
        assert_eq!(name_or_dash(None::<&shoal_wire::FiringReason>), "-");
        let kv = key_values(&[("id", "x".into()), ("state", "queued".into()), ("extra", "-".into())]);
        assert_eq!(kv, "id:    x\nstate: queued\nextra: -\n");
    }

    #[test]
    fn progress_is_hidden_when_asked() {
        // Tests run without a terminal; a hidden bar draws nothing and still counts.
        let bar = transfer(false, Some(10), "upload".into());
        assert!(bar.is_hidden());
        bar.set_position(4);
        assert_eq!(bar.position(), 4);
        assert!(spinner(false, "waiting".into()).is_hidden());
        assert!(!progress_shown(true), "never with --json");
    }
}
