//! The console's markup: the page frame, sign-in and message pages, and
//! the small pieces every page uses (times, statuses, utilization bars,
//! the usage chart). maud escapes every value spliced in; nothing here
//! wraps data in `PreEscaped`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use maud::{DOCTYPE, Markup, html};
use prism_proto::control::{NamespaceStatus, TenantState};

use crate::usage::UsagePoint;

/// The one stylesheet (`/console/style.css`): the CSP allows no inline
/// style, so bars are `<meter>` elements and charts SVG attributes.
pub const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: .6em 1.2em; display: flex; gap: 1.4em; align-items: center; }
header a { color: #cfd8ea; text-decoration: none; } header a:hover { color: #fff; }
header .who { margin-left: auto; color: #9aa5b8; } header form { display: inline; }
header button { background: none; border: 1px solid #5a6478; color: #cfd8ea; border-radius: 3px; cursor: pointer; }
main { padding: 1em 1.6em; max-width: 1200px; }
h1 { font-size: 1.4em; margin: .2em 0 .6em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; background: #fff; width: 100%; margin: .4em 0; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #e3e6ec; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; }
.cards { display: flex; gap: .8em; flex-wrap: wrap; }
.card { background: #fff; border: 1px solid #e3e6ec; border-radius: 4px; padding: .6em 1em; min-width: 8em; }
.card b { display: block; font-size: 1.6em; }
.ACTIVE { color: #1b7f3b; } .DEGRADED { color: #b3261e; font-weight: 600; } .PROVISIONING { color: #8a6d00; }
.DELETING, .DELETED, .SUSPENDED { color: #6b7280; }
.muted { color: #6b7280; } .error { color: #b3261e; }
form.filters { display: flex; gap: .6em; flex-wrap: wrap; align-items: end; margin: .4em 0 .8em; }
form.filters label { display: flex; flex-direction: column; font-size: .85em; color: #4b5563; }
input, select { font: inherit; padding: .2em .4em; }
meter { width: 10em; }
pre { background: #fff; border: 1px solid #e3e6ec; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
.signin { max-width: 34em; margin: 4em auto; background: #fff; padding: 1.4em 2em; border: 1px solid #e3e6ec; }
.signin textarea { width: 100%; height: 7em; font-family: monospace; }
nav.pages { margin: .6em 0; }
"#;

/// A whole document: `title` in the tab, `body` as the page's body.
fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Prism console" }
                link rel="stylesheet" href="/console/style.css";
            }
            body { (body) }
        }
    }
}

/// The frame of every signed-in page.
pub fn page(title: &str, who: &str, body: Markup) -> Markup {
    document(
        title,
        html! {
            header {
                strong { "Prism" }
                a href="/console/" { "Overview" }
                a href="/console/tenants" { "Tenants" }
                a href="/console/namespaces" { "Namespaces" }
                a href="/console/usage" { "Usage" }
                a href="/console/audit" { "Audit" }
                span.who { "signed in as " (who) }
                form method="post" action="/console/signout" { button type="submit" { "Sign out" } }
            }
            main { h1 { (title) } (body) }
        },
    )
}

pub fn signin_page(why: Option<&str>) -> Markup {
    document(
        "Sign in",
        html! {
            div.signin {
                h1 { "Prism console" }
                @if let Some(why) = why { p.error id="signin-error" { (why) } }
                p { "Paste a bearer token (what " code { "PRISM_TOKEN" } " holds for the CLI). You see what its principal may see through the API, read-only." }
                form method="post" action="/console/signin" {
                    textarea name="token" id="token" required autocomplete="off" spellcheck="false" {}
                    p { button type="submit" id="signin" { "Sign in" } }
                }
            }
        },
    )
}

pub fn message_page(title: &str, message: &str) -> Markup {
    document(
        title,
        html! {
            main {
                h1 { (title) }
                p.error id="message" { (message) }
                p { a href="/console/" { "Back to the overview" } " · " a href="/console/signin" { "Sign in" } }
            }
        },
    )
}

/// `ACTIVE`, `DEGRADED`, … (the number for a status this build does not
/// know).
pub fn status_name(status: i32) -> String {
    NamespaceStatus::try_from(status)
        .ok()
        .map(|s| s.as_str_name().trim_start_matches("NAMESPACE_STATUS_").to_owned())
        .unwrap_or_else(|| status.to_string())
}

pub fn tenant_state_name(state: i32) -> String {
    TenantState::try_from(state)
        .ok()
        .map(|s| s.as_str_name().trim_start_matches("TENANT_STATE_").to_owned())
        .unwrap_or_else(|| state.to_string())
}

/// A status as a coloured word.
pub fn status(name: &str) -> Markup {
    html! { span class=(name) { (name) } }
}

pub fn system_time(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0)))
}

/// `2026-12-04 08:35:57 UTC`.
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    system_time(t).map_or_else(|| "—".to_owned(), format_time)
}

pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Howard Hinnant's days-to-civil: the proleptic Gregorian date of a day
/// count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `3 s`, `4 min`, `2 h` (whole units, for ages).
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// A quantity with its unit, readable: bytes in KiB/MiB/GiB, others as
/// numbers.
pub fn amount(quota: &str, v: f64) -> String {
    if quota.contains("bytes") {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = v;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < units.len() {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 { format!("{v:.0} B") } else { format!("{v:.1} {}", units[unit]) }
    } else if v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A utilization bar: `<meter>` marks 80 % and more as high.
pub fn meter(percent: f64) -> Markup {
    let shown = percent.clamp(0.0, 100.0);
    html! {
        meter min="0" max="100" low="80" high="95" optimum="0" value=(format!("{shown:.1}")) title=(format!("{percent:.1} %")) {}
        " " (format!("{percent:.1} %"))
    }
}

/// The requests-per-second history as an SVG line chart, oldest left.
pub fn chart(points: &[UsagePoint]) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    if points.is_empty() {
        return html! { p.muted { "No usage history yet: gateways report every few seconds, and the chart keeps the last ten minutes." } };
    }
    let max = points.iter().map(|p| p.requests_per_second).fold(0.0f64, f64::max).max(1.0);
    let step = if points.len() > 1 { W / (points.len() - 1) as f64 } else { 0.0 };
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", i as f64 * step, H - p.requests_per_second / max * (H - 10.0)))
        .collect();
    let first = points.first().map(|p| format_time(p.at)).unwrap_or_default();
    let last = points.last().map(|p| format_time(p.at)).unwrap_or_default();
    html! {
        svg.chart width="600" height="140" viewBox="0 -10 600 150" role="img" aria-label="requests per second over time" {
            line x1="0" y1=(H) x2=(W) y2=(H) stroke="#9aa5b8" {}
            polyline fill="none" stroke="#2f6fde" stroke-width="2" points=(line.join(" ")) {}
            text x="2" y="2" font-size="11" fill="#4b5563" { (format!("{max:.1} req/s")) }
        }
        p.muted { "requests per second, " (first) " to " (last) " (" (points.len()) " samples)" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_and_amounts() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(UNIX_EPOCH + Duration::from_secs(1_796_373_357)), "2026-12-04 08:35:57 UTC");
        assert_eq!(format_time(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 UTC");
        assert_eq!(amount("storage_bytes", 3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(amount("requests_per_second", 12.0), "12");
        assert_eq!(duration(Duration::from_secs(185)), "3 min");
    }

    #[test]
    fn escapes_what_it_is_given() {
        let page = message_page("t", "<script>alert(1)</script>").into_string();
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !page.contains("<script>"), "{page}");
    }
}
