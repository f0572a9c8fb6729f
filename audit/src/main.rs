//! `audit`: verifies, follows and queries the event log straight from Kafka, printing JSON
//! lines on stdout.

use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use flowline_audit::{AuditRecord, EventLine, Filter, LogReader, Start, query::parse_time};
use flowline_event_log::KafkaSettings;
use flowline_schemas::EventCodec;
use uuid::Uuid;

/// Audits the workflow event log read directly from Kafka.
#[derive(Debug, Parser)]
#[command(name = "audit", version)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaSettings,
    /// The database holding the personal data keys (ADR 26). When given, `tail` and
    /// `query` print personal fields decrypted, or `"[erased]"` once their subject was
    /// erased; without it they print them as the log has them, encrypted.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Opens the personal fields of printed lines, when the keys' database was given.
struct Opener {
    runtime: tokio::runtime::Runtime,
    vault: flowline_personal_data::Vault,
}

impl Opener {
    fn connect(url: Option<&str>) -> anyhow::Result<Option<Self>> {
        let Some(url) = url else { return Ok(None) };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let pool = runtime.block_on(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url),
        )?;
        Ok(Some(Self {
            runtime,
            vault: flowline_personal_data::Vault::new(pool),
        }))
    }

    fn open(opener: Option<&Self>, mut line: EventLine) -> anyhow::Result<EventLine> {
        if let (Some(opener), Some(data)) = (opener, &mut line.data) {
            opener
                .runtime
                .block_on(opener.vault.open(&line.tenant, data))?;
        }
        Ok(line)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reads the whole topic and checks every stream: versions contiguous from 1 and in
    /// order, each record matching its hash and its predecessor's. Prints one JSON line per
    /// problem and a summary; exits 1 when there is a problem.
    Verify {
        #[command(flatten)]
        topic: TopicOverride,
        /// Only this tenant's streams.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Follows the log: one JSON line per event (metadata and decoded value).
    Tail {
        #[command(flatten)]
        topic: TopicOverride,
        /// Start from the oldest record instead of new records only.
        #[arg(long)]
        from_beginning: bool,
    },
    /// One JSON line per matching event, up to the end of the log as it was at start.
    Query {
        #[command(flatten)]
        topic: TopicOverride,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this stream (workflow id).
        #[arg(long, value_parser = stream_id)]
        stream: Option<Uuid>,
        /// Only this event type (`WorkflowSubmitted`) or CloudEvents type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events that occurred at or after this RFC 3339 time.
        #[arg(long, value_parser = |s: &str| parse_time("--since", s))]
        since: Option<DateTime<Utc>>,
        /// Only events that occurred at or before this RFC 3339 time.
        #[arg(long, value_parser = |s: &str| parse_time("--until", s))]
        until: Option<DateTime<Utc>>,
    },
}

/// `--topic` after the subcommand, as auditors type it.
#[derive(Debug, clap::Args)]
struct TopicOverride {
    /// Topic to read (overrides --kafka-topic / KAFKA_TOPIC).
    #[arg(long = "topic", value_name = "TOPIC")]
    name: Option<String>,
}

fn stream_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|_| format!("--stream: not a UUID: {text:?}"))
}

fn print(out: &mut impl Write, value: &impl serde::Serialize) {
    // A closed stdout (`audit tail | head`) ends the program quietly.
    if serde_json::to_writer(&mut *out, value).is_err() || writeln!(out).is_err() {
        std::process::exit(0);
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let topic = match &cli.command {
        Command::Verify { topic, .. }
        | Command::Tail { topic, .. }
        | Command::Query { topic, .. } => topic.name.clone().unwrap_or(cli.kafka.topic),
    };
    let reader = LogReader::new(&cli.kafka.brokers, &topic);
    let opener = match &cli.command {
        Command::Verify { .. } => None,
        _ => Opener::connect(cli.database_url.as_deref())?,
    };
    let opener = opener.as_ref();
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Verify { tenant, .. } => {
            let summary = flowline_audit::verify_log(&reader, tenant.as_deref(), |finding| {
                print(&mut out, finding);
            })?;
            print(&mut out, &serde_json::json!({ "summary": summary }));
            Ok(if summary.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Tail { from_beginning, .. } => {
            let codec = EventCodec::default();
            let start = if from_beginning {
                Start::Beginning
            } else {
                Start::End
            };
            let mut failed = None;
            reader.follow(start, |message| {
                match AuditRecord::parse(message, &codec) {
                    Ok(record) => match Opener::open(opener, record.to_line(&codec)) {
                        Ok(line) => print(&mut out, &line),
                        Err(error) => {
                            failed = Some(error);
                            return ControlFlow::Break(());
                        }
                    },
                    Err(unreadable) => eprintln!(
                        "skipping {}/{}: {}",
                        unreadable.partition, unreadable.offset, unreadable.reason
                    ),
                }
                let _ = out.flush();
                ControlFlow::Continue(())
            })?;
            failed.map_or(Ok(ExitCode::SUCCESS), Err)
        }
        Command::Query {
            topic: _,
            tenant,
            stream,
            event_type,
            since,
            until,
        } => {
            let filter = Filter {
                tenant,
                stream,
                event_type,
                since,
                until,
            };
            let mut failed = None;
            flowline_audit::query_log(&reader, &filter, None, |line| {
                if failed.is_none() {
                    match Opener::open(opener, line) {
                        Ok(line) => print(&mut out, &line),
                        Err(error) => failed = Some(error),
                    }
                }
            })?;
            failed.map_or(Ok(ExitCode::SUCCESS), Err)
        }
    }
}
