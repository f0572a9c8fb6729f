//! Checkpoints: the next offset per partition of each projection, stored with its rows.

use std::collections::{BTreeSet, HashMap};

use sqlx::{PgPool, Postgres, Transaction};

/// Where to resume each of `partitions`: the next offset, or `None` (from the beginning).
pub async fn positions(
    pool: &PgPool,
    projection: &str,
    topic: &str,
    partitions: &BTreeSet<i32>,
) -> sqlx::Result<HashMap<i32, Option<i64>>> {
    let stored = all(pool, projection, topic).await?;
    Ok(partitions
        .iter()
        .map(|partition| (*partition, stored.get(partition).copied()))
        .collect())
}

/// Locks the checkpoints of `partitions` for this transaction (creating missing ones), so
/// two members briefly owning one partition during a rebalance apply its records once.
pub async fn lock(
    transaction: &mut Transaction<'_, Postgres>,
    projection: &str,
    topic: &str,
    partitions: &[i32],
) -> sqlx::Result<HashMap<i32, i64>> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, topic, partition, next_offset) \
         SELECT $1, $2, p, 0 FROM unnest($3::int[]) AS p ON CONFLICT DO NOTHING",
    )
    .bind(projection)
    .bind(topic)
    .bind(partitions)
    .execute(&mut **transaction)
    .await?;
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM projection_checkpoints \
         WHERE projection = $1 AND topic = $2 AND partition = ANY($3) \
         ORDER BY partition FOR UPDATE",
    )
    .bind(projection)
    .bind(topic)
    .bind(partitions)
    .fetch_all(&mut **transaction)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Stores the new next offsets in the same transaction as the rows they cover.
pub async fn advance(
    transaction: &mut Transaction<'_, Postgres>,
    projection: &str,
    topic: &str,
    next_offsets: &HashMap<i32, i64>,
) -> sqlx::Result<()> {
    let (partitions, offsets): (Vec<i32>, Vec<i64>) =
        next_offsets.iter().map(|(p, o)| (*p, *o)).unzip();
    sqlx::query(
        "UPDATE projection_checkpoints SET next_offset = batch.next_offset, updated_at = now() \
         FROM unnest($3::int[], $4::bigint[]) AS batch(partition, next_offset) \
         WHERE projection = $1 AND topic = $2 AND projection_checkpoints.partition = batch.partition",
    )
    .bind(projection)
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Every checkpoint of a projection: partition → next offset.
pub async fn all(pool: &PgPool, projection: &str, topic: &str) -> sqlx::Result<HashMap<i32, i64>> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM projection_checkpoints WHERE projection = $1 AND topic = $2",
    )
    .bind(projection)
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
