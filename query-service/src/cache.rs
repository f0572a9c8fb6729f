//! Hot reads (a workflow by id) cached in Redis.
//!
//! Freshness does not rest on invalidation alone, because invalidations can be missed
//! (a listener reconnecting) or race a reader that fills the cache with what it read just
//! before a commit. Each entry therefore carries:
//! - the projected version it shows, checked against a per-workflow *version floor* that
//!   the invalidator raises on every projection commit (a late fill of an older version
//!   is never served);
//! - a *generation*, bumped when notifications may have been lost (every entry of an
//!   older generation is ignored);
//! - the read model's checkpoints when it was read, so a request with a consistency token
//!   is only answered from an entry that already reflected the token's position.
//!
//! Redis is only a cache: when it is down every read goes to PostgreSQL. An invalidation
//! that fails leaves an entry in Redis that may be older than the read model; from then on
//! this process neither serves nor fills entries until it has bumped the generation (which
//! retires every entry, its own and other replicas'), at its next lookup that reaches
//! Redis. So a failed invalidation costs cache hits, never freshness.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flowline_event_log::ConsistencyToken;
use flowline_service_kit::redis_settings::RedisSettings;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tracing::warn;
use uuid::Uuid;

use crate::Result;
use crate::changes::{Change, ChangeFeed};
use crate::consistency::ConsistencyGate;
use crate::read_model::{ReadModel, WorkflowView};

/// The shape of cached entries, part of their keys: a query service reading another shape
/// (an older release during a rolling upgrade) neither serves nor overwrites these. Bump it
/// whenever `WorkflowView` changes. `v2`: runs and steps as the executor drives them;
/// `v3`: with their usage.
const ENTRY_SHAPE: &str = "v3";

/// How long a version floor outlives the entries it guards.
const FLOOR_TTL: Duration = Duration::from_secs(24 * 3600);

/// Raises a floor, never lowers it (notifications of one workflow may arrive out of order
/// across query-service replicas). Built once: `Script::new` hashes the source.
static RAISE_FLOOR: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RAISE_FLOOR_SOURCE));

const RAISE_FLOOR_SOURCE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
";

/// Read cache settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheSettings {
    /// Redis holding the read cache.
    #[command(flatten)]
    pub redis: RedisSettings,
    /// How long a cached workflow lives, in seconds (0 turns the cache off).
    #[arg(long, env = "READ_CACHE_TTL_SECONDS", default_value_t = 300)]
    pub read_cache_ttl_seconds: u64,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    generation: i64,
    checkpoints: BTreeMap<i32, i64>,
    workflow: WorkflowView,
}

/// The Redis side of the cache.
#[derive(Clone)]
pub struct ReadCache {
    redis: Option<ConnectionManager>,
    prefix: String,
    ttl: Duration,
    /// An invalidation failed and no generation bump has retired the entries since.
    suspect: Arc<AtomicBool>,
    /// Invalidations that failed (`/metrics`).
    failed_invalidations: Arc<AtomicU64>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("enabled", &self.redis.is_some())
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// What a lookup found.
enum Lookup {
    Hit(Box<WorkflowView>),
    /// Not usable: read the database, then fill with this generation.
    Miss {
        generation: i64,
    },
}

impl ReadCache {
    /// Connects; a Redis that cannot be reached turns the cache off (with a warning).
    pub async fn connect(settings: &CacheSettings) -> Self {
        let ttl = Duration::from_secs(settings.read_cache_ttl_seconds);
        let redis = if ttl.is_zero() {
            None
        } else {
            match redis::Client::open(settings.redis.redis_url.as_str()) {
                Ok(client) => match ConnectionManager::new(client).await {
                    Ok(manager) => Some(manager),
                    Err(error) => {
                        warn!(%error, "Redis unreachable: the read cache is off");
                        None
                    }
                },
                Err(error) => {
                    warn!(%error, "REDIS_URL invalid: the read cache is off");
                    None
                }
            }
        };
        Self {
            redis,
            prefix: settings.redis.redis_key_prefix.clone(),
            ttl,
            suspect: Arc::default(),
            failed_invalidations: Arc::default(),
        }
    }

    /// Invalidations that failed so far.
    pub fn failed_invalidations(&self) -> u64 {
        self.failed_invalidations.load(Ordering::Relaxed)
    }

    /// An invalidation failed: no entry may be trusted until the generation is bumped.
    fn invalidation_failed(&self) {
        self.failed_invalidations.fetch_add(1, Ordering::Relaxed);
        self.suspect.store(true, Ordering::Release);
    }

    /// After a failed invalidation, retires every entry (bumps the generation) before the
    /// cache is used again; false while that is not done.
    async fn trusted(&self) -> bool {
        if !self.suspect.load(Ordering::Acquire) {
            return true;
        }
        // Cleared first: an invalidation failing from here on sets it again.
        self.suspect.store(false, Ordering::Release);
        if self.bump_generation().await {
            tracing::info!("read cache in use again after failed invalidations");
            true
        } else {
            self.suspect.store(true, Ordering::Release);
            false
        }
    }

    fn entry_key(&self, tenant: &str, id: Uuid) -> String {
        format!("{}:read:workflow:{ENTRY_SHAPE}:{tenant}:{id}", self.prefix)
    }

    fn floor_key(&self, tenant: &str, id: Uuid) -> String {
        format!("{}:read:floor:{tenant}:{id}", self.prefix)
    }

    fn generation_key(&self) -> String {
        format!("{}:read:generation", self.prefix)
    }

    async fn lookup(&self, tenant: &str, id: Uuid, token: Option<&ConsistencyToken>) -> Lookup {
        let Some(mut redis) = self.redis.clone() else {
            return Lookup::Miss { generation: 0 };
        };
        if !self.trusted().await {
            return Lookup::Miss { generation: -1 };
        }
        let found: redis::RedisResult<(Option<String>, Option<i64>, Option<i64>)> =
            redis::cmd("MGET")
                .arg(self.entry_key(tenant, id))
                .arg(self.floor_key(tenant, id))
                .arg(self.generation_key())
                .query_async(&mut redis)
                .await;
        let (entry, floor, generation) = match found {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "read cache lookup failed");
                return Lookup::Miss { generation: -1 };
            }
        };
        let generation = generation.unwrap_or(0);
        let usable = entry
            .and_then(|text| serde_json::from_str::<Entry>(&text).ok())
            .filter(|entry| entry.generation == generation)
            .filter(|entry| entry.workflow.version >= floor.unwrap_or(0))
            .filter(|entry| token.is_none_or(|token| token.is_passed_by(&entry.checkpoints)));
        match usable {
            Some(entry) => Lookup::Hit(Box::new(entry.workflow)),
            None => Lookup::Miss { generation },
        }
    }

    async fn fill(
        &self,
        tenant: &str,
        id: Uuid,
        generation: i64,
        checkpoints: BTreeMap<i32, i64>,
        workflow: &WorkflowView,
    ) {
        let Some(mut redis) = self.redis.clone() else {
            return;
        };
        if generation < 0 {
            return;
        }
        let entry = Entry {
            generation,
            checkpoints,
            workflow: workflow.clone(),
        };
        let text = serde_json::to_string(&entry).expect("entries serialize");
        let stored: redis::RedisResult<()> = redis::cmd("SET")
            .arg(self.entry_key(tenant, id))
            .arg(text)
            .arg("EX")
            .arg(self.ttl.as_secs())
            .query_async(&mut redis)
            .await;
        if let Err(error) = stored {
            warn!(%error, "read cache fill failed");
        }
    }

    /// The projection committed `version` of a workflow: older entries must not be served.
    pub async fn invalidate(&self, tenant: &str, id: Uuid, version: i64) {
        let Some(mut redis) = self.redis.clone() else {
            return;
        };
        let raised: redis::RedisResult<i64> = RAISE_FLOOR
            .key(self.floor_key(tenant, id))
            .key(self.entry_key(tenant, id))
            .arg(version)
            .arg(FLOOR_TTL.as_secs())
            .invoke_async(&mut redis)
            .await;
        if let Err(error) = raised {
            warn!(%error, "read cache invalidation failed; the cache is bypassed until it is retired");
            self.invalidation_failed();
        }
    }

    /// Invalidates on every change the projection commits, for as long as the feed runs;
    /// when changes may have been missed, every entry so far.
    pub fn follow(&self, feed: &ChangeFeed) {
        if self.redis.is_none() {
            return;
        }
        let cache = self.clone();
        let mut changes = feed.subscribe();
        tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                match change {
                    Change::Workflow(change) => {
                        cache
                            .invalidate(&change.tenant, change.workflow_id, change.version)
                            .await
                    }
                    Change::Resync => cache.invalidate_all().await,
                }
            }
        });
    }

    /// Notifications may have been missed: no entry cached so far may be served.
    pub async fn invalidate_all(&self) {
        if !self.bump_generation().await {
            self.invalidation_failed();
        }
    }

    /// Retires every entry cached so far; false when Redis could not be told.
    async fn bump_generation(&self) -> bool {
        let Some(mut redis) = self.redis.clone() else {
            return true;
        };
        let bumped: redis::RedisResult<i64> = redis::cmd("INCR")
            .arg(self.generation_key())
            .query_async(&mut redis)
            .await;
        match bumped {
            Ok(_) => true,
            Err(error) => {
                warn!(%error, "read cache generation bump failed");
                false
            }
        }
    }
}

/// Workflow reads as the API serves them: waiting for a consistency token, then from the
/// cache when it may answer, else from the read model (filling the cache).
#[derive(Debug, Clone)]
pub struct WorkflowReads {
    read_model: ReadModel,
    gate: ConsistencyGate,
    cache: ReadCache,
}

impl WorkflowReads {
    /// Reads through `cache` into `read_model`, waiting at `gate`.
    pub fn new(read_model: ReadModel, gate: ConsistencyGate, cache: ReadCache) -> Self {
        Self {
            read_model,
            gate,
            cache,
        }
    }

    /// The consistency gate.
    pub fn gate(&self) -> &ConsistencyGate {
        &self.gate
    }

    /// The cache (its invalidation is driven by projection commits).
    pub fn cache(&self) -> &ReadCache {
        &self.cache
    }

    /// One workflow, no older than `token` when one is given.
    pub async fn workflow(
        &self,
        tenant: &str,
        id: Uuid,
        token: Option<&ConsistencyToken>,
    ) -> Result<Option<WorkflowView>> {
        let reached = match token {
            Some(token) => Some(self.gate.wait_for(token).await?),
            None => None,
        };
        let generation = match self.cache.lookup(tenant, id, token).await {
            Lookup::Hit(workflow) => return Ok(Some(*workflow)),
            Lookup::Miss { generation } => generation,
        };
        // Checkpoints read before the row (the row is at least as fresh); those the wait
        // just read will do.
        let checkpoints = match reached {
            Some(checkpoints) => checkpoints,
            None => self.gate.checkpoints().await?,
        };
        let workflow = self.read_model.workflow(tenant, id).await?;
        if let Some(workflow) = &workflow {
            self.cache
                .fill(tenant, id, generation, checkpoints, workflow)
                .await;
        }
        Ok(workflow)
    }
}
