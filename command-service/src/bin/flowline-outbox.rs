//! `flowline-outbox`: the operators' view of events the relay parked, and their redrive.
//! Run `flowline-outbox --help`.

use clap::{Parser, Subcommand};
use flowline_event_store::ParkedEvents;
use uuid::Uuid;

/// Lists and redrives the events the outbox relay parked because the log refused them (see
/// docs/adr/0018-parked-events-and-snapshot-history.md).
#[derive(Debug, Parser)]
#[command(name = "flowline-outbox", version)]
struct Cli {
    /// PostgreSQL URL of the event store.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/flowline"
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints parked events as JSON lines, oldest first.
    Parked {
        /// Only those after this store position (to page on).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Puts parked events back in the outbox (a whole stream at a time, so its events
    /// keep their order); one the log still refuses is parked again.
    Redrive {
        /// The streams to redrive.
        #[arg(long = "stream", required_unless_present = "all")]
        streams: Vec<Uuid>,
        /// Every stream with parked events.
        #[arg(long, conflicts_with = "streams")]
        all: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pool = flowline_service_kit::db::connect(&cli.database_url, 2).await?;
    let parked = ParkedEvents::new(pool);
    match cli.command {
        Command::Parked { after, limit } => {
            for event in parked.list(after, limit.clamp(1, 10_000)).await? {
                println!("{}", serde_json::to_string(&event)?);
            }
        }
        Command::Redrive { streams, all } => {
            let streams = (!all).then_some(streams.as_slice());
            let redriven = parked.redrive(streams).await?;
            println!("{redriven} events back in the outbox");
        }
    }
    Ok(())
}
