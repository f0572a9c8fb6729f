//! `projectors dlq …` and `projectors rebuild …`: operations from a terminal.

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::application::Projections;
use crate::config::{Config, DlqAction};
use crate::dead_letter::{self, Redrive};
use crate::rebuild::{self, RebuildSettings, StartAt};
use crate::workflow_graph::WorkflowGraph;
use crate::workflow_read_model::WorkflowReadModel;
use crate::{Error, Result};

/// Runs a dead-letter operation and prints its result; `false` when something failed.
pub async fn dead_letters(config: &Config, action: &DlqAction) -> Result<bool> {
    let pool = config.database.prepare().await?;
    match action {
        DlqAction::List { all } => {
            let letters = dead_letter::list(&pool, None, *all).await?;
            println!(
                "{:>6}  {:<24} {:>9} {:>10}  {:<20}  reason",
                "id", "projection", "partition", "offset", "failed at"
            );
            for letter in &letters {
                println!(
                    "{:>6}  {:<24} {:>9} {:>10}  {:<20}  {}{}",
                    letter.id,
                    letter.projection,
                    letter.partition,
                    letter.log_offset,
                    letter.failed_at.format("%Y-%m-%d %H:%M:%S"),
                    letter.reason,
                    if letter.redriven_at.is_some() {
                        " (re-driven)"
                    } else if letter.superseded_at.is_some() {
                        " (superseded by a rebuild)"
                    } else {
                        ""
                    }
                );
            }
            println!("{} dead letter(s)", letters.len());
            Ok(true)
        }
        DlqAction::Show { id } => match dead_letter::show(&pool, *id).await? {
            Some(letter) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&letter).expect("serializable")
                );
                Ok(true)
            }
            None => {
                eprintln!("error: no dead letter with id {id}");
                Ok(false)
            }
        },
        DlqAction::Redrive { id, all } => {
            let projections = Projections {
                read_model: WorkflowReadModel::live(),
                graph: WorkflowGraph::new(config.graph.store(pool.clone())),
                usage: crate::usage::Usage,
            };
            let outcomes = match (id, all) {
                (Some(id), false) => vec![projections.redrive(&pool, *id).await?],
                _ => projections.redrive_all(&pool).await?,
            };
            let mut ok = true;
            for outcome in &outcomes {
                ok &= matches!(outcome, Redrive::Applied { .. });
                println!("{}", serde_json::to_string(outcome).expect("serializable"));
            }
            Ok(ok)
        }
    }
}

/// The full name of a projection given with or without its version.
pub fn projection_name(given: &str) -> Option<&'static str> {
    Projections::NAMES
        .into_iter()
        .find(|name| *name == given || name.split('.').next() == Some(given))
}

/// `projectors rebuild …`: runs a rebuild in the foreground with a progress bar.
pub async fn rebuild(config: &Config, projection: &str, from: Option<&str>) -> Result<bool> {
    let Some(projection) = projection_name(projection) else {
        eprintln!(
            "error: projection: unknown '{projection}'; expected one of {}",
            Projections::NAMES.join(", ")
        );
        return Ok(false);
    };
    let at = match from {
        None => StartAt::Beginning,
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(time) => StartAt::Time(time.with_timezone(&Utc)),
            Err(error) => {
                eprintln!(
                    "error: --from: not an RFC 3339 time ({error}), e.g. 2026-11-26T10:00:00Z"
                );
                return Ok(false);
            }
        },
    };
    if let Some(refusal) = rebuild::refusal(projection, &config.graph) {
        eprintln!("error: projection: {refusal}");
        return Ok(false);
    }
    let pool = config.database.prepare().await?;
    let (record, resumed) = match rebuild::start(&pool, &config.kafka, projection, at).await {
        Ok(started) => started,
        Err(Error::Rebuild(message) | Error::RebuildBusy(message)) => {
            eprintln!("error: {message}");
            return Ok(false);
        }
        Err(error) => return Err(error),
    };
    if resumed {
        println!(
            "resuming rebuild {} of {projection} (started {})",
            record.id, record.started_at
        );
    } else {
        println!("rebuild {} of {projection} started", record.id);
    }
    let settings = RebuildSettings::from_config(config, pool).await?;
    let stop = CancellationToken::new();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        flowline_service_kit::shutdown::signal().await;
        ctrl_c.cancel();
    });
    let runtime = tokio::runtime::Handle::current();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records, {msg}",
        )
        .expect("valid template"),
    );
    let progress_bar = bar.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        rebuild::run(settings, record, runtime, stop, |progress| {
            progress_bar.set_length(progress.applied + progress.remaining);
            progress_bar.set_position(progress.applied);
            let eta = progress
                .eta_seconds
                .map_or_else(|| "ETA -".to_owned(), |s| format!("ETA {s:.0} s"));
            progress_bar.set_message(format!(
                "{:.0}/s, {eta} ({} from the event store, {} from the log)",
                progress.rate, progress.from_event_store, progress.from_log
            ));
        })
    })
    .await
    .map_err(|e| Error::Rebuild(e.to_string()))?;
    bar.finish_and_clear();
    match outcome {
        Ok(record) => {
            println!(
                "rebuild {} swapped in at {}; the replaced tables are dropped after {}",
                record.id,
                record
                    .swapped_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default(),
                record
                    .retired_until
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            );
            Ok(true)
        }
        Err(error) => {
            eprintln!("rebuild interrupted: {error}; run the same command again to resume");
            Ok(false)
        }
    }
}
