//! Projectors: consume the log and build the PostgreSQL read models.
//!
//! Each projection commits its rows and its checkpoint (next offset per partition) in one
//! PostgreSQL transaction, and on every partition assignment resumes from that checkpoint,
//! never from the broker's group offsets alone: nothing is applied twice or skipped,
//! through crashes and rebalances. A stream-version guard makes re-delivered events no-ops
//! as a second line of defence.

mod admin;
mod application;
mod checkpoint;
pub mod cli;
pub mod config;
pub mod dead_letter;
mod error;
mod leases;
pub mod projection;
pub mod rebuild;
pub mod runner;
pub mod usage;
pub mod workflow_graph;
pub mod workflow_read_model;

pub use application::{Application, Projections};
pub use config::{Config, HistorySource};
pub use error::{Error, Result};
