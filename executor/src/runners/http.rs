//! `http` steps: `config` {`method`, `url`, `headers`, `body`, `timeout`}; the output is
//! `{status, headers, body}` (the body parsed when the response says it is JSON). 2xx
//! succeeds; 429 and 5xx are retryable (honouring `Retry-After`), other statuses are not.
//! Every attempt sends its attempt id as `Idempotency-Key`, so a server can tell a retry
//! of the same attempt from a new one.
//!
//! Destinations are checked on the addresses a name resolves to (the connection uses only
//! checked addresses, so DNS rebinding cannot slip past) and on every redirect:
//! link-local and cloud metadata addresses are always refused; private, loopback and
//! other non-public ranges only when `HTTP_ALLOWED_NETWORKS` lists them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{Map, Value};

use super::{AttemptFailure, AttemptInput, StepOutput, StepRunner};

/// `http` step settings.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpSettings {
    /// Non-public networks `http` steps may call, comma-separated CIDRs (e.g.
    /// `127.0.0.0/8,::1/128,10.0.0.0/8`); empty allows none. Link-local and cloud metadata
    /// addresses are refused whatever this says. The default allows loopback only, for
    /// local development and tests: production configs should set it to what they need.
    #[arg(
        long,
        env = "HTTP_ALLOWED_NETWORKS",
        default_value = "127.0.0.0/8,::1/128"
    )]
    pub allowed_networks: String,
    /// Timeout of an `http` attempt whose step sets none.
    #[arg(long, env = "HTTP_DEFAULT_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub default_timeout: Duration,
    /// Largest response body read, in bytes; a larger one fails the attempt.
    #[arg(long, env = "HTTP_MAX_RESPONSE_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_response_bytes: usize,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    flowline_domain::policy::parse_duration(text)
}

/// Which addresses steps may reach.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    allowed: Vec<IpNet>,
}

impl DestinationPolicy {
    /// Allows the non-public networks listed (comma-separated CIDRs).
    pub fn parse(allowed: &str) -> Result<Self, String> {
        let allowed = allowed
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|cidr| {
                cidr.parse::<IpNet>()
                    .map_err(|e| format!("HTTP_ALLOWED_NETWORKS: '{cidr}': {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Why `ip` may not be called, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if always_refused(ip) {
            return Some("link-local and cloud metadata addresses are never called");
        }
        if is_public(ip) || self.allowed.iter().any(|net| net.contains(&ip)) {
            None
        } else {
            Some("a private, loopback or reserved address not in HTTP_ALLOWED_NETWORKS")
        }
    }
}

fn always_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() // 169.254.0.0/16, AWS/GCP/Azure metadata among them
                || v4 == Ipv4Addr::new(100, 100, 100, 200) // Alibaba Cloud metadata
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80 // fe80::/10
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) // AWS IMDS over IPv6
                || v6.is_unspecified()
                || v6.is_multicast()
        }
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            !(v6.is_loopback()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                // Forms that embed an IPv4 address a gateway may reach: NAT64 (64:ff9b::/96),
                // 6to4 (2002::/16), IPv4-compatible (::/96).
                || (segments[0] == 0x64 && segments[1] == 0xff9b)
                || segments[0] == 0x2002
                || segments[..6].iter().all(|s| *s == 0))
        }
    }
}

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves names and keeps only the addresses the policy allows.
struct CheckedResolver(Arc<DestinationPolicy>);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.refusal(addr.ip()) {
                    None => true,
                    Some(why) => {
                        refusal = Some(format!("{host} resolves to {}: {why}", addr.ip()));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusal.unwrap_or_else(|| format!("{host} has no address"));
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Runs `http` steps.
#[derive(Debug, Clone)]
pub struct HttpRunner {
    client: reqwest::Client,
    policy: Arc<DestinationPolicy>,
    default_timeout: Duration,
    max_response_bytes: usize,
}

fn literal_refusal(policy: &DestinationPolicy, url: &reqwest::Url) -> Option<String> {
    let ip = match url.host()? {
        url::Host::Ipv4(v4) => IpAddr::V4(v4),
        url::Host::Ipv6(v6) => IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    policy.refusal(ip).map(|why| format!("{ip}: {why}"))
}

impl HttpRunner {
    /// A runner with these settings.
    pub fn new(settings: &HttpSettings) -> Result<Self, String> {
        let policy = Arc::new(DestinationPolicy::parse(&settings.allowed_networks)?);
        let redirect_policy = Arc::clone(&policy);
        let client = reqwest::Client::builder()
            // A proxy would resolve names itself, past the checked resolver.
            .no_proxy()
            .dns_resolver(CheckedResolver(Arc::clone(&policy)))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    attempt.error(Refused("more than 5 redirects".into()))
                } else if let Some(why) = literal_refusal(&redirect_policy, attempt.url()) {
                    attempt.error(Refused(format!("redirect refused: {why}")))
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("flowline-executor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            client,
            policy,
            default_timeout: settings.default_timeout,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// The attempt timeout of a step that sets none.
    pub fn default_timeout(&self) -> Duration {
        self.default_timeout
    }

    fn request(&self, attempt: &AttemptInput) -> Result<reqwest::RequestBuilder, AttemptFailure> {
        let config = &attempt.input;
        let invalid = |message: String| AttemptFailure::permanent("invalid_config", message);
        let url = match config.get("url") {
            Some(Value::String(url)) => reqwest::Url::parse(url)
                .map_err(|e| invalid(format!("config.url '{url}' is not a URL: {e}")))?,
            _ => return Err(invalid("an http step needs `config.url`, a string".into())),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "config.url: scheme '{}' is not http or https",
                url.scheme()
            )));
        }
        if let Some(why) = literal_refusal(&self.policy, &url) {
            return Err(AttemptFailure::permanent("destination_refused", why));
        }
        let method = match config.get("method") {
            None | Some(Value::Null) => reqwest::Method::GET,
            Some(Value::String(m)) => {
                reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| invalid(format!("config.method '{m}' is not an HTTP method")))?
            }
            Some(_) => return Err(invalid("config.method must be a string".into())),
        };
        let mut headers = HeaderMap::new();
        match config.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(fields)) => {
                for (name, value) in fields {
                    let Value::String(value) = value else {
                        return Err(invalid(format!("config.headers.{name} must be a string")));
                    };
                    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        invalid(format!("config.headers: '{name}' is not a header name"))
                    })?;
                    let value = HeaderValue::from_str(value).map_err(|_| {
                        invalid(format!("config.headers.{name}: not a valid header value"))
                    })?;
                    headers.insert(name, value);
                }
            }
            Some(_) => {
                return Err(invalid(
                    "config.headers must be an object of strings".into(),
                ));
            }
        }
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&attempt.attempt_id.to_string())
                .expect("a uuid is a header value"),
        );
        let mut request = self.client.request(method, url).headers(headers);
        request = match config.get("body") {
            None | Some(Value::Null) => request,
            Some(Value::String(text)) => request.body(text.clone()),
            Some(json) => request.json(json),
        };
        // The executor drops the attempt at its deadline; this only keeps a client-side
        // bound for an attempt without one.
        let remaining = attempt
            .deadline
            .and_then(|d| (d - chrono::Utc::now()).to_std().ok())
            .unwrap_or(self.default_timeout);
        Ok(request.timeout(remaining + Duration::from_secs(1)))
    }
}

/// Deepest JSON response body kept parsed.
pub const MAX_PARSED_DEPTH: usize = 32;

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(24 * 3600)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(wait.min(Duration::from_secs(24 * 3600)))
}

fn classify(error: &reqwest::Error) -> AttemptFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return AttemptFailure::permanent("destination_refused", refused.0.clone());
        }
        source = cause.source();
    }
    let chain = {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    };
    if error.is_timeout() {
        AttemptFailure::transient("timed_out", chain)
    } else {
        AttemptFailure::transient("http_transport", chain)
    }
}

impl StepRunner for HttpRunner {
    fn run(&self, attempt: AttemptInput) -> BoxFuture<'static, Result<StepOutput, AttemptFailure>> {
        let request = self.request(&attempt);
        let limit = self.max_response_bytes;
        Box::pin(async move {
            let mut response = request?.send().await.map_err(|e| classify(&e))?;
            let status = response.status();
            let mut headers = Map::new();
            for (name, value) in response.headers() {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                match headers.get_mut(name.as_str()) {
                    Some(Value::String(existing)) => {
                        existing.push_str(", ");
                        existing.push_str(&value);
                    }
                    _ => {
                        headers.insert(name.as_str().to_owned(), Value::String(value));
                    }
                }
            }
            let wait = retry_after(response.headers());
            let is_json = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"));
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
                if body.len() + chunk.len() > limit {
                    return Err(AttemptFailure::permanent(
                        "response_too_large",
                        format!(
                            "the response body exceeds {limit} bytes (HTTP_MAX_RESPONSE_BYTES)"
                        ),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            let text = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                let snippet: String = text.chars().take(300).collect();
                let message = format!("HTTP {status}: {snippet}");
                let retryable = status.as_u16() == 429 || status.is_server_error();
                return Err(AttemptFailure {
                    kind: "http_status".into(),
                    message,
                    retryable,
                    retry_after: wait.filter(|_| retryable),
                    calls: Vec::new(),
                });
            }
            // Parsed only when shallow: a deeply nested document stays text, so reads and
            // projections of the output never meet nesting near their limits.
            let body = if is_json {
                serde_json::from_slice(&body)
                    .ok()
                    .filter(|parsed| depth(parsed) <= MAX_PARSED_DEPTH)
                    .unwrap_or(Value::String(text))
            } else {
                Value::String(text)
            };
            Ok(serde_json::json!({
                "status": status.as_u16(),
                "headers": headers,
                "body": body,
            })
            .into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_are_refused_even_when_allowed() {
        let policy = DestinationPolicy::parse("0.0.0.0/0,::/0").unwrap();
        for ip in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            assert!(policy.refusal(ip.parse().unwrap()).is_some(), "{ip}");
        }
    }

    #[test]
    fn private_ranges_need_the_allow_list_and_public_ones_do_not() {
        let none = DestinationPolicy::parse("").unwrap();
        let loopback = DestinationPolicy::parse("127.0.0.0/8,::1/128").unwrap();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "::1",
            "fd12::1",
            "100.64.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::a9fe:a9fe",
        ] {
            assert!(none.refusal(ip.parse().unwrap()).is_some(), "{ip}");
        }
        assert!(loopback.refusal("127.0.0.1".parse().unwrap()).is_none());
        assert!(loopback.refusal("::1".parse().unwrap()).is_none());
        assert!(loopback.refusal("10.0.0.1".parse().unwrap()).is_some());
        assert!(none.refusal("93.184.216.34".parse().unwrap()).is_none());
        assert!(DestinationPolicy::parse("nonsense").is_err());
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&serde_json::json!(1)), 0);
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }
}
