//! `hgpt runs list` and `hgpt runs show`: reading `hgpt serve`'s run store.

use crate::settings::Settings;
use anyhow::{Context, Result, bail};
use hgpt_store::Store;
use std::io::Write;
use std::process::ExitCode;

/// The store in the data directory, or `None` when there is none yet
/// (nothing is created just to read).
fn open(settings: &Settings) -> Result<Option<Store>> {
    let file = settings.data_dir.join(hgpt_store::DB_FILE_NAME);
    if !file.is_file() {
        return Ok(None);
    }
    Store::open(&settings.data_dir)
        .map(Some)
        .with_context(|| format!("cannot open the run store {}", file.display()))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The first line of `text`, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// Print a page of runs.
pub fn list(
    settings: &Settings,
    limit: usize,
    before: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let Some(store) = open(settings)? else {
        if json {
            crate::print_line(r#"{"data": [], "next": null}"#)?;
        } else {
            eprintln!("no runs yet (no store in {})", settings.data_dir.display());
        }
        return Ok(ExitCode::SUCCESS);
    };
    let page = store.list_runs(limit.max(1), before)?;
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({"data": page.runs, "next": page.next});
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let id_width = page
        .runs
        .iter()
        .map(|r| r.id.len())
        .max()
        .unwrap_or(2)
        .max(2);
    writeln!(
        out,
        "{:<id_width$}  {:<11}  {:<19}  {:>8}  REQUEST",
        "ID", "STATE", "CREATED (UTC)", "TIME"
    )?;
    for run in &page.runs {
        let took = match (run.started_at_ms, run.finished_at_ms) {
            (Some(start), Some(end)) => {
                format!("{:.1}s", end.saturating_sub(start) as f64 / 1000.0)
            }
            _ => "-".to_string(),
        };
        writeln!(
            out,
            "{:<id_width$}  {:<11}  {:<19}  {:>8}  {}",
            run.id,
            run.state.as_str(),
            utc(run.created_at_ms),
            took,
            one_line(&run.request, 60)
        )?;
    }
    if let Some(next) = &page.next {
        writeln!(out, "more: hgpt runs list --before {next}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Delete ended runs that ended more than `older_than_days` ago, and all
/// but the newest `keep`.
pub fn prune(
    settings: &Settings,
    older_than_days: Option<f64>,
    keep: Option<usize>,
) -> Result<ExitCode> {
    let before = match older_than_days {
        Some(days) if !(days >= 0.0 && days.is_finite()) => {
            bail!("--older-than must be a number of days, 0 or more, got {days}")
        }
        Some(days) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            Some(now.saturating_sub((days * 86_400_000.0) as u64))
        }
        None => None,
    };
    let Some(store) = open(settings)? else {
        eprintln!("no runs yet (no store in {})", settings.data_dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    let deleted = store.prune(before, keep)?;
    eprintln!(
        "deleted {deleted} run{} from {}",
        if deleted == 1 { "" } else { "s" },
        settings.data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Print one run (and its events) as JSON.
pub fn show(settings: &Settings, id: &str, events: bool) -> Result<ExitCode> {
    let Some(store) = open(settings)? else {
        bail!(
            "no run {id:?}: there is no run store in {} yet",
            settings.data_dir.display()
        );
    };
    let Some(run) = store.run(id)? else {
        bail!("no run {id:?} in {}", settings.data_dir.display());
    };
    let mut value = serde_json::to_value(&run)?;
    if events {
        value["events"] = serde_json::to_value(store.events(id, 0)?)?;
    }
    crate::print_line(&serde_json::to_string_pretty(&value)?)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_229_238_123), "2026-11-21 02:47:18");
    }

    #[test]
    fn requests_are_cut_to_one_line() {
        assert_eq!(one_line("a\nb", 10), "a");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("", 4), "");
    }
}
