//! `shoal audit`: the audit trail (admin), newest first, filtered as `GET /api/v1/audit` is.

use crate::client_cmds::{CmdResult, EXIT_OK};
use crate::output::{emit, or_dash, print_json, rows_table, short_time, Row};
use shoal_client::{AuditEntry, AuditFilter, AuditOutcome, Client};

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Only this principal's changes (`token:NAME`, `user:NAME`)
    #[arg(long)]
    principal: Option<String>,
    /// Only this action: an operation id such as createSchedule, putSandboxFile, createSession (a login)
    #[arg(long)]
    action: Option<String>,
    /// Only targets starting with this (a sandbox's name finds its files too)
    #[arg(long)]
    target: Option<String>,
    /// ok, denied or failed
    #[arg(long, value_parser = parse_outcome)]
    outcome: Option<AuditOutcome>,
    /// Only what this node recorded (the one the client sent the request to)
    #[arg(long)]
    node: Option<String>,
    /// From this time on: a duration before now (`1h`, `7d`) or an RFC 3339 time
    #[arg(long, value_name = "DURATION|TIME")]
    since: Option<String>,
    /// Before this time: a duration before now or an RFC 3339 time
    #[arg(long, value_name = "DURATION|TIME")]
    until: Option<String>,
    /// Entries to show, 1 to 1000 (default 50)
    #[arg(long)]
    limit: Option<u32>,
    /// Go on from the page before (the cursor it printed)
    #[arg(long)]
    cursor: Option<String>,
}

fn parse_outcome(text: &str) -> Result<AuditOutcome, String> {
    AuditOutcome::parse(text).ok_or_else(|| {
        format!("unknown outcome `{text}`; use one of {}", AuditOutcome::ALL.map(|o| o.as_str()).join(", "))
    })
}

impl Row for AuditEntry {
    const HEADERS: &'static [&'static str] = &["TIME", "PRINCIPAL", "NODE", "ACTION", "TARGET", "OUTCOME", "STATUS"];

    fn cells(&self) -> Vec<String> {
        let node = match &self.served_by {
            Some(other) => format!("{}>{other}", self.node),
            None => self.node.clone(),
        };
        let status = match &self.code {
            Some(code) => format!("{} {code}", self.status),
            None => self.status.to_string(),
        };
        vec![
            short_time(Some(&self.at)),
            self.principal.clone(),
            node,
            self.action.clone(),
            or_dash((!self.target.is_empty()).then_some(&self.target)),
            self.outcome.to_string(),
            status,
        ]
    }
}

pub(crate) async fn cmd_audit(client: &Client, args: AuditArgs, json: bool) -> CmdResult {
    let filter = AuditFilter {
        principal: args.principal,
        action: args.action,
        target: args.target,
        outcome: args.outcome,
        node: args.node,
        since: args.since,
        until: args.until,
        limit: args.limit,
        cursor: args.cursor,
    };
    let page = client.audit(&filter).await?;
    if json {
        print_json(&page);
    } else {
        emit(&rows_table(&page.entries));
        if let Some(next) = &page.next_cursor {
            eprintln!("more: shoal audit --cursor {next} (with the same filters)");
        }
    }
    Ok(EXIT_OK)
}
