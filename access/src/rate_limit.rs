//! Rate limits per credential and per tenant, kept in Redis so every instance of every
//! service shares them.
//!
//! One Lua script applies the generic cell rate algorithm (GCRA) to all of a request's
//! limits at once: atomic (no instance can slip between the check and the update), one
//! round trip, and time taken from the Redis server's clock so instances with drifting
//! clocks agree. A quota `q/w` admits a burst of `q` requests and then one every `w/q`.
//! A request refused by one limit consumes none of the others.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

/// How long a limit check may take before Redis counts as down for this request.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);

const GCRA: &str = r#"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local allowed = 1
local retry_after = 0
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local next_tat = tat + interval
  local allow_at = next_tat - window
  if now < allow_at then
    allowed = 0
    if allow_at - now > retry_after then retry_after = allow_at - now end
    tats[i] = tat
  else
    tats[i] = next_tat
  end
end
local answer = {allowed, retry_after}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  if allowed == 1 then
    redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil((tats[i] - now) / 1000) + 1)
  end
  local remaining = math.floor((window - (tats[i] - now)) / interval)
  if remaining < 0 then remaining = 0 end
  table.insert(answer, remaining)
  table.insert(answer, tats[i] - now)
end
return answer
"#;

/// `q` requests per window `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests admitted in a window (also the burst).
    pub requests: u32,
    /// The window.
    pub window: Duration,
}

impl Quota {
    fn interval_micros(self) -> u64 {
        (self.window.as_micros() as u64 / u64::from(self.requests)).max(1)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.requests, self.window.as_secs())
    }
}

/// A quota setting that is not `<requests>/<window>` (`100/10s`, `600/1m`, `5000/1h`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0:?} is not a quota: write <requests>/<window> like 100/10s, 600/1m or 5000/1h")]
pub struct BadQuota(String);

impl FromStr for Quota {
    type Err = BadQuota;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadQuota(text.to_owned());
        let (requests, window) = text.trim().split_once('/').ok_or_else(bad)?;
        let requests: u32 = requests.trim().parse().map_err(|_| bad())?;
        let window = window.trim();
        let split = window.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (amount, unit) = window.split_at(split);
        let amount: u64 = if amount.is_empty() {
            1
        } else {
            amount.parse().map_err(|_| bad())?
        };
        let seconds = match unit {
            "s" => amount,
            "m" => amount * 60,
            "h" => amount * 3600,
            _ => return Err(bad()),
        };
        if requests == 0 || seconds == 0 || seconds > 86_400 {
            return Err(bad());
        }
        Ok(Quota {
            requests,
            window: Duration::from_secs(seconds),
        })
    }
}

/// One limit a request counts against.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Its name in the `RateLimit` headers (`credential`, `tenant`).
    pub name: &'static str,
    /// Who it counts (a credential's id, a tenant).
    pub key: String,
    /// Its quota.
    pub quota: Quota,
}

/// Where one limit stands after a request.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The limit's name.
    pub name: &'static str,
    /// Its quota.
    pub quota: Quota,
    /// Requests still admitted now.
    pub remaining: u64,
    /// Until the whole quota is available again.
    pub reset: Duration,
}

/// The outcome of a check.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Admitted; where each limit stands.
    Admitted(Vec<Standing>),
    /// Refused; retry after this long.
    Refused {
        /// The wait.
        retry_after: Duration,
        /// Where each limit stands.
        standings: Vec<Standing>,
    },
    /// Redis did not answer; what happens is the configured choice.
    Unavailable,
}

/// What a request gets when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenRedisDown {
    /// Serve it without a limit (availability first; logged and counted).
    Admit,
    /// Refuse it with 503 and `Retry-After`.
    Refuse,
}

/// The shared limiter.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    client: Option<redis::Client>,
    connection: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
    prefix: String,
    unavailable: AtomicU64,
}

impl RateLimiter {
    /// A limiter on the Redis at `url` under key `prefix`. A malformed URL counts as a
    /// Redis that is down (so the choice of [`WhenRedisDown`] applies, as for an outage).
    pub fn new(url: &str, prefix: &str) -> Self {
        let client = redis::Client::open(url)
            .map_err(|error| tracing::warn!(%error, "rate limits: bad Redis URL"))
            .ok();
        Self {
            inner: Arc::new(Inner {
                client,
                connection: Mutex::new(None),
                script: redis::Script::new(GCRA),
                prefix: prefix.to_owned(),
                unavailable: AtomicU64::new(0),
            }),
        }
    }

    /// Checks (and, when admitted, counts) one request against `limits`.
    pub async fn check(&self, limits: &[Limit]) -> Verdict {
        match tokio::time::timeout(CHECK_TIMEOUT, self.run(limits)).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(error)) => self.down(&error.to_string()).await,
            Err(_) => self.down("timed out").await,
        }
    }

    /// Checks Redis failed to answer since the start.
    pub fn unavailable_checks(&self) -> u64 {
        self.inner.unavailable.load(Ordering::Relaxed)
    }

    async fn down(&self, why: &str) -> Verdict {
        self.inner.unavailable.fetch_add(1, Ordering::Relaxed);
        // The next check connects afresh.
        *self.inner.connection.lock().await = None;
        tracing::warn!(why, "rate limits: Redis unavailable");
        Verdict::Unavailable
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut connection = self.inner.connection.lock().await;
        if let Some(connection) = connection.as_ref() {
            return Ok(connection.clone());
        }
        let client = self.inner.client.clone().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad Redis URL"))
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CHECK_TIMEOUT))
            .set_number_of_retries(0);
        let fresh = ConnectionManager::new_with_config(client, config).await?;
        *connection = Some(fresh.clone());
        Ok(fresh)
    }

    async fn run(&self, limits: &[Limit]) -> redis::RedisResult<Verdict> {
        let mut connection = self.connection().await?;
        let mut invocation = self.inner.script.prepare_invoke();
        for limit in limits {
            invocation
                .key(format!(
                    "{}:ratelimit:{}:{}",
                    self.inner.prefix, limit.name, limit.key
                ))
                .arg(limit.quota.interval_micros())
                .arg(limit.quota.window.as_micros() as u64);
        }
        let answer: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        let standings = limits
            .iter()
            .zip(answer[2..].chunks(2))
            .map(|(limit, pair)| Standing {
                name: limit.name,
                quota: limit.quota,
                remaining: pair[0].max(0) as u64,
                reset: Duration::from_micros(pair[1].max(0) as u64),
            })
            .collect();
        Ok(if answer[0] == 1 {
            Verdict::Admitted(standings)
        } else {
            Verdict::Refused {
                retry_after: Duration::from_micros(answer[1].max(0) as u64),
                standings,
            }
        })
    }
}

/// `RateLimit-Policy` and `RateLimit` header values (draft-ietf-httpapi-ratelimit-headers)
/// for `standings`.
pub fn headers(standings: &[Standing]) -> (String, String) {
    let policy = standings
        .iter()
        .map(|s| {
            format!(
                "\"{}\";q={};w={}",
                s.name,
                s.quota.requests,
                s.quota.window.as_secs()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let limit = standings
        .iter()
        .map(|s| {
            format!(
                "\"{}\";r={};t={}",
                s.name,
                s.remaining,
                s.reset.as_secs_f64().ceil() as u64
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    (policy, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_from_requests_per_window() {
        assert_eq!(
            "100/10s".parse::<Quota>().unwrap(),
            Quota {
                requests: 100,
                window: Duration::from_secs(10)
            }
        );
        assert_eq!(
            "600/m".parse::<Quota>().unwrap().window,
            Duration::from_secs(60)
        );
        assert_eq!("5000/1h".parse::<Quota>().unwrap().requests, 5000);
        for bad in ["", "100", "0/1s", "10/0s", "10/1d", "ten/1s", "10/2y"] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_name_each_policy() {
        let standing = Standing {
            name: "tenant",
            quota: Quota {
                requests: 100,
                window: Duration::from_secs(60),
            },
            remaining: 42,
            reset: Duration::from_millis(1500),
        };
        let (policy, limit) = headers(&[standing]);
        assert_eq!(policy, "\"tenant\";q=100;w=60");
        assert_eq!(limit, "\"tenant\";r=42;t=2");
    }
}
