//! Partition ownership through PostgreSQL leases: each instance of a consumer (a
//! projection, the executor) heartbeats, takes an even share of the partitions, renews its
//! leases, and gives back what exceeds its share; a dead instance's leases expire and the
//! others claim them. The tables are `projection_members` and `projection_leases`, keyed by
//! the consumer's name.
//!
//! Two instances briefly working one partition (a lease expired while its holder was still
//! busy) must be harmless to the consumer: projections lock the partition's checkpoint in
//! their batch transaction, the executor appends with expected versions.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// How long a lease or a membership lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often an instance renews (well within the TTL).
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// One instance's view of its leases for one consumer.
#[derive(Debug, Clone)]
pub struct Leases {
    pool: PgPool,
    projection: String,
    member: Uuid,
    partitions: i32,
    ttl: Duration,
}

impl Leases {
    /// A new member of `projection` over a topic of `partitions` partitions.
    pub fn new(pool: PgPool, projection: &str, partitions: i32) -> Self {
        Self {
            pool,
            projection: projection.to_owned(),
            member: Uuid::new_v4(),
            partitions,
            ttl: LEASE_TTL,
        }
    }

    /// The same with leases lasting `ttl` without renewal (renew at least every third of it).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Heartbeats, renews, rebalances toward an even share, and returns the partitions this
    /// instance owns now.
    pub async fn renew(&self) -> sqlx::Result<BTreeSet<i32>> {
        let ttl = self.ttl.as_secs_f64();
        sqlx::query(
            "INSERT INTO projection_members (projection, member, expires_at) \
             VALUES ($1, $2, now() + make_interval(secs => $3)) \
             ON CONFLICT (projection, member) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(&self.projection)
        .bind(self.member)
        .bind(ttl)
        .execute(&self.pool)
        .await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_members WHERE projection = $1 AND expires_at > now()",
        )
        .bind(&self.projection)
        .fetch_one(&self.pool)
        .await?;
        let share = (i64::from(self.partitions) + live.max(1) - 1) / live.max(1);

        let mut mine: BTreeSet<i32> = sqlx::query_scalar(
            "UPDATE projection_leases SET expires_at = now() + make_interval(secs => $3) \
             WHERE projection = $1 AND member = $2 RETURNING partition",
        )
        .bind(&self.projection)
        .bind(self.member)
        .bind(ttl)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();

        let owned = mine.len() as i64;
        if owned > share {
            let extra: Vec<i32> = mine
                .iter()
                .rev()
                .take((owned - share) as usize)
                .copied()
                .collect();
            sqlx::query("DELETE FROM projection_leases WHERE projection = $1 AND member = $2 AND partition = ANY($3)")
                .bind(&self.projection)
                .bind(self.member)
                .bind(&extra)
                .execute(&self.pool)
                .await?;
            for partition in extra {
                mine.remove(&partition);
            }
        } else if owned < share {
            let claimed: Vec<i32> = sqlx::query_scalar(
                "INSERT INTO projection_leases (projection, partition, member, expires_at) \
                 SELECT $1, p, $2, now() + make_interval(secs => $3) FROM ( \
                   SELECT p FROM generate_series(0, $4 - 1) AS p \
                   WHERE NOT EXISTS (SELECT 1 FROM projection_leases l \
                                     WHERE l.projection = $1 AND l.partition = p AND l.expires_at > now()) \
                   ORDER BY p LIMIT $5) AS free \
                 ON CONFLICT (projection, partition) DO UPDATE \
                   SET member = excluded.member, expires_at = excluded.expires_at \
                   WHERE projection_leases.expires_at <= now() \
                 RETURNING partition",
            )
            .bind(&self.projection)
            .bind(self.member)
            .bind(ttl)
            .bind(self.partitions)
            .bind(share - owned)
            .fetch_all(&self.pool)
            .await?;
            mine.extend(claimed);
        }
        Ok(mine)
    }

    /// Gives every lease back (clean shutdown), so others take over at once.
    pub async fn release(&self) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM projection_leases WHERE projection = $1 AND member = $2")
            .bind(&self.projection)
            .bind(self.member)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM projection_members WHERE projection = $1 AND member = $2")
            .bind(&self.projection)
            .bind(self.member)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
