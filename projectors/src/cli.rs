//! `projectors dlq …`: dead-letter operations from a terminal.

use crate::Result;
use crate::application::Projections;
use crate::config::{Config, DlqAction};
use crate::dead_letter::{self, Redrive};
use crate::workflow_graph::WorkflowGraph;
use crate::workflow_read_model::WorkflowReadModel;

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
                read_model: WorkflowReadModel,
                graph: WorkflowGraph::new(config.graph.store(pool.clone())),
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
