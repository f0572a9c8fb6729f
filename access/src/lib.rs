//! Who may act, in which tenant, and how often: every service's access control, written
//! once (ADR 27).
//!
//! A request proves who it is with `Authorization: Bearer <credential>`: a JWT signed by a
//! key of the configured JWKS, or an API key (`flk_…`). The [`guard`] middleware verifies
//! it, decides the tenant the request acts in (the credential's own; another one only for
//! an admin of the platform tenant who names it in `X-Tenant-Id`), applies the rate limits
//! and hands the handlers a [`Caller`]. Handlers state what they need with
//! [`Caller::require`] or [`Caller::require_platform`]; a handler that takes no `Caller` is
//! public (probes, OpenAPI and GraphiQL pages), and a request without credentials to one
//! that does gets 401.

pub mod api_keys;
pub mod dev;
pub mod jwt;
pub mod rate_limit;
pub mod role;
pub mod settings;

use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flowline_service_kit::Problem;
use flowline_service_kit::redis_settings::RedisSettings;
use flowline_service_kit::request::{TENANT_HEADER, valid_tenant};
use sqlx::PgPool;

pub use api_keys::ApiKeyStore;
pub use role::Role;
pub use settings::AccessSettings;

use jwt::{JwtVerifier, KeySource, TokenRules};
use rate_limit::{Limit, RateLimiter, Verdict, WhenRedisDown};

/// Why access control could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token key set is unusable.
    #[error(transparent)]
    Keys(#[from] jwt::TokenError),
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A JWT: its issuer (if any) and subject.
    Token {
        /// `iss`.
        issuer: Option<String>,
        /// `sub`.
        subject: String,
    },
    /// An API key, by its public id.
    ApiKey(String),
}

/// The verified caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    tenant: String,
    home_tenant: String,
    role: Role,
    credential: Credential,
    expires_at: Option<DateTime<Utc>>,
    platform: bool,
}

impl Caller {
    /// The tenant the request acts in.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The tenant the credential belongs to.
    pub fn home_tenant(&self) -> &str {
        &self.home_tenant
    }

    /// The credential's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// When the credential stops being valid (tokens; API keys are revoked instead).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// Who acts, as the log records it: the token's subject or `key:<id>`, followed by
    /// `@<home tenant>` when acting in another tenant, so both are on the event.
    pub fn actor(&self) -> String {
        let who = match &self.credential {
            Credential::Token { subject, .. } => subject.clone(),
            Credential::ApiKey(id) => format!("key:{id}"),
        };
        if self.tenant == self.home_tenant {
            who
        } else {
            format!("{who}@{}", self.home_tenant)
        }
    }

    /// The credential's identity for rate limits.
    pub fn credential_key(&self) -> String {
        match &self.credential {
            Credential::Token { issuer, subject } => {
                format!(
                    "token:{}:{}:{subject}",
                    issuer.as_deref().unwrap_or(""),
                    self.home_tenant
                )
            }
            Credential::ApiKey(id) => format!("key:{id}"),
        }
    }

    /// Whether the credential belongs to the platform tenant.
    pub fn is_platform(&self) -> bool {
        self.platform
    }

    /// 403 unless the credential's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), Problem> {
        if self.role >= role {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this needs the {role} role; the credentials grant {}",
                self.role
            )))
        }
    }

    /// 403 unless the request may act in `tenant` (named in a path): its own tenant, or any
    /// for an admin of the platform tenant.
    pub fn require_tenant(&self, tenant: &str) -> Result<(), Problem> {
        if tenant == self.tenant || (self.platform && self.role == Role::Admin) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "the credentials act in tenant {}, not {tenant}",
                self.tenant
            )))
        }
    }

    /// 403 unless the credential is the platform tenant's and its role is at least
    /// `role`: for what acts on every tenant at once.
    pub fn require_platform(&self, role: Role) -> Result<(), Problem> {
        self.require(role)?;
        if self.platform {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this acts on every tenant: it needs the {role} role in the platform tenant"
            )))
        }
    }
}

fn forbidden(detail: String) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}

/// Why a request's credentials were not accepted: its answer (401 with
/// `WWW-Authenticate`, 403, 503) as a problem.
#[derive(Debug, Clone)]
pub struct Refusal(Problem);

impl Refusal {
    /// The problem answered.
    pub fn problem(&self) -> &Problem {
        &self.0
    }

    /// Whether the credentials themselves were refused (401), rather than what they
    /// asked for (403) or the check failing (503).
    pub fn is_unauthenticated(&self) -> bool {
        self.0.status == StatusCode::UNAUTHORIZED.as_u16()
    }
}

impl From<Problem> for Refusal {
    fn from(problem: Problem) -> Self {
        Self(problem)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let unauthenticated = self.is_unauthenticated();
        let mut response = self.0.into_response();
        if unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"flowline\""),
            );
        }
        response
    }
}

/// 401, saying why.
fn unauthorized(detail: impl Into<String>) -> Refusal {
    Refusal(Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    ))
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            unauthorized("send Authorization: Bearer <token or API key> (README: Access)")
        })
    }
}

/// What a credential proves before a tenant is chosen.
struct Identity {
    tenant: String,
    role: Role,
    credential: Credential,
    expires_at: Option<DateTime<Utc>>,
}

/// A service's access control; cheap to clone.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AccessSettings,
    tokens: Option<JwtVerifier>,
    keys: ApiKeyStore,
    limiter: RateLimiter,
}

impl Access {
    /// Access control with `settings`, API keys in `pool`'s database and rate limits in
    /// `redis`. Without a JWKS file or URL only API keys are accepted.
    pub async fn new(
        settings: &AccessSettings,
        pool: PgPool,
        redis: &RedisSettings,
    ) -> Result<Self, Error> {
        let source = match (&settings.jwks_file, &settings.jwks_url) {
            (Some(file), _) => Some(KeySource::File(file.clone())),
            (None, Some(url)) => Some(KeySource::Url(url.clone())),
            (None, None) => None,
        };
        let tokens = match source {
            Some(source) => Some(
                JwtVerifier::new(
                    source,
                    TokenRules {
                        issuer: settings.issuer.clone(),
                        audience: settings.audience.clone(),
                        leeway_seconds: settings.leeway_seconds,
                        tenant_claim: settings.tenant_claim.clone(),
                        roles_claim: settings.roles_claim.clone(),
                        min_refresh: std::time::Duration::from_secs(settings.jwks_refresh_seconds),
                    },
                )
                .await?,
            ),
            None => {
                tracing::warn!(
                    "neither AUTH_JWKS_FILE nor AUTH_JWKS_URL is set: only API keys are accepted"
                );
                None
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                tokens,
                keys: ApiKeyStore::new(pool),
                limiter: RateLimiter::new(&redis.redis_url, &redis.redis_key_prefix),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &AccessSettings {
        &self.inner.settings
    }

    /// The API key store.
    pub fn keys(&self) -> &ApiKeyStore {
        &self.inner.keys
    }

    /// Whether `caller` may read `/metrics`: anyone while AUTH_PUBLIC_METRICS is on,
    /// else an operator of the platform tenant.
    pub fn metrics_allowed(&self, caller: Option<&Caller>) -> Result<(), Refusal> {
        if self.inner.settings.public_metrics {
            return Ok(());
        }
        match caller {
            None => Err(unauthorized(
                "/metrics needs credentials (AUTH_PUBLIC_METRICS=false)",
            )),
            Some(caller) => Ok(caller.require_platform(Role::Operator)?),
        }
    }

    /// The CORS layer for `CORS_ALLOWED_ORIGINS`, or `None` (no cross-origin calls) when
    /// it names none. Put it outside [`guard`]: preflights carry no credentials.
    pub fn cors(&self) -> Option<tower_http::cors::CorsLayer> {
        use axum::http::{HeaderName, Method};
        let origins: Vec<HeaderValue> = self
            .inner
            .settings
            .cors_allowed_origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin.trim()).ok())
            .collect();
        if origins.is_empty() {
            return None;
        }
        let names = |names: &[&'static str]| -> Vec<HeaderName> {
            names
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect()
        };
        Some(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers(names(&[
                    "authorization",
                    "content-type",
                    "if-match",
                    "idempotency-key",
                    "x-consistency-token",
                    "x-correlation-id",
                    "x-tenant-id",
                    "traceparent",
                ]))
                .expose_headers(names(&[
                    "etag",
                    "location",
                    "retry-after",
                    "ratelimit",
                    "ratelimit-policy",
                    "x-consistency-token",
                ]))
                .max_age(std::time::Duration::from_secs(600)),
        )
    }

    /// 403 for a WebSocket upgrade whose `Origin` is neither the service's own (its
    /// `Host`) nor one of `WS_ALLOWED_ORIGINS`: a page of another site must not ride on
    /// a browser's credentials (cross-site WebSocket hijacking).
    pub fn check_websocket_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or_default().trim();
        let own = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .is_some_and(|host| {
                origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
            });
        let listed = self
            .inner
            .settings
            .ws_allowed_origins
            .iter()
            .any(|allowed| allowed.trim().eq_ignore_ascii_case(origin));
        if own || listed {
            Ok(())
        } else {
            Err(forbidden(format!(
                "WebSocket connections from the origin {origin:?} are not allowed (WS_ALLOWED_ORIGINS)"
            ))
            .into())
        }
    }

    /// Rate-limit checks that found Redis unavailable since the start.
    pub fn rate_limit_unavailable(&self) -> u64 {
        self.inner.limiter.unavailable_checks()
    }

    /// Verifies `credential` (a JWT or an API key, without the `Bearer` scheme) and picks
    /// the tenant:
    /// `requested_tenant` (an `X-Tenant-Id`) is honoured only for the credential's own
    /// tenant or for an admin of the platform tenant.
    pub async fn caller(
        &self,
        credential: &str,
        requested_tenant: Option<&str>,
    ) -> Result<Caller, Refusal> {
        let identity = self.identify(credential).await?;
        let platform = identity.tenant == self.inner.settings.platform_tenant;
        let tenant = match requested_tenant.map(str::trim) {
            None => identity.tenant.clone(),
            Some(requested) if requested == identity.tenant => identity.tenant.clone(),
            Some(requested) => {
                if !(platform && identity.role == Role::Admin) {
                    return Err(forbidden(
                        "X-Tenant-Id names another tenant: only an admin of the platform tenant \
                         may act in one"
                            .into(),
                    )
                    .into());
                }
                valid_tenant(requested, "header", "X-Tenant-Id")?
            }
        };
        Ok(Caller {
            tenant,
            home_tenant: identity.tenant,
            role: identity.role,
            credential: identity.credential,
            expires_at: identity.expires_at,
            platform,
        })
    }

    async fn identify(&self, credential: &str) -> Result<Identity, Refusal> {
        if credential.is_empty() {
            return Err(unauthorized("the Authorization header holds no credential"));
        }
        if api_keys::looks_like_key(credential) {
            return match self.inner.keys.verify(credential).await {
                Ok(key) => Ok(Identity {
                    tenant: key.tenant,
                    role: key.role,
                    credential: Credential::ApiKey(key.id),
                    expires_at: None,
                }),
                Err(api_keys::KeyError::Refused) => Err(unauthorized("the API key is not valid")),
                Err(error) => {
                    tracing::error!(%error, "verifying an API key failed");
                    Err(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "Service unavailable",
                        "credentials cannot be checked right now",
                    )
                    .retry_after(1)
                    .into())
                }
            };
        }
        let Some(tokens) = &self.inner.tokens else {
            return Err(unauthorized(
                "this service accepts no tokens (no AUTH_JWKS_FILE or AUTH_JWKS_URL): use an API key",
            ));
        };
        match tokens.verify(credential).await {
            Ok(token) => Ok(Identity {
                tenant: token.tenant,
                role: token.role,
                credential: Credential::Token {
                    issuer: token.issuer,
                    subject: token.subject,
                },
                expires_at: Some(token.expires_at),
            }),
            Err(error) => Err(unauthorized(error.to_string())),
        }
    }

    /// The rate limits of `caller`: its credential's (by role) and its tenant's.
    fn limits(&self, caller: &Caller) -> [Limit; 2] {
        let settings = &self.inner.settings;
        [
            Limit {
                name: "credential",
                key: caller.credential_key(),
                quota: settings.credential_quota(caller.role),
            },
            Limit {
                name: "tenant",
                key: caller.tenant.clone(),
                quota: settings.rate_limit_tenant,
            },
        ]
    }

    /// Applies the rate limits: the headers to add to the answer, or the refusal.
    async fn admit(&self, caller: &Caller) -> Result<Option<(String, String)>, Response> {
        match self.inner.limiter.check(&self.limits(caller)).await {
            Verdict::Admitted(standings) => Ok(Some(rate_limit::headers(&standings))),
            Verdict::Refused {
                retry_after,
                standings,
            } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let (policy, limit) = rate_limit::headers(&standings);
                let mut response = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                    format!("over the rate limit ({policy}); retry in {seconds} s"),
                )
                .retry_after(seconds)
                .into_response();
                set_rate_headers(response.headers_mut(), &policy, &limit);
                Err(response)
            }
            Verdict::Unavailable => match self.inner.settings.when_redis_down {
                WhenRedisDown::Admit => Ok(None),
                WhenRedisDown::Refuse => Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate-limits-unavailable",
                    "Rate limits unavailable",
                    "the rate limits cannot be checked right now and this service refuses \
                     requests meanwhile (RATE_LIMIT_WHEN_REDIS_DOWN=refuse)",
                )
                .retry_after(1)
                .into_response()),
            },
        }
    }
}

/// The access counters in Prometheus text, for every service's `/metrics`.
pub fn metrics_text(access: &Access) -> String {
    format!(
        "# HELP flowline_rate_limit_unavailable_total Rate-limit checks that found Redis unavailable.\n\
         # TYPE flowline_rate_limit_unavailable_total counter\n\
         flowline_rate_limit_unavailable_total {}\n",
        access.rate_limit_unavailable()
    )
}

fn set_rate_headers(headers: &mut HeaderMap, policy: &str, limit: &str) {
    if let (Ok(policy), Ok(limit)) = (HeaderValue::from_str(policy), HeaderValue::from_str(limit)) {
        headers.insert("ratelimit-policy", policy);
        headers.insert("ratelimit", limit);
    }
}

/// The credential of an `Authorization` value of the `Bearer` scheme (RFC 6750: the
/// scheme's name is case-insensitive).
pub fn bearer_credential(authorization: &str) -> Option<&str> {
    let (scheme, credential) = authorization.trim().split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty() && !credential.contains(' '))
        .then_some(credential)
}

/// The middleware of every service: a request with credentials is verified, placed in a
/// tenant and rate-limited, and its handler gets a [`Caller`]; a request without any goes
/// on as it is (a handler needing a `Caller` answers 401).
pub async fn guard(State(access): State<Access>, mut request: Request, next: Next) -> Response {
    let Some(authorization) = request.headers().get(header::AUTHORIZATION) else {
        return next.run(request).await;
    };
    let Some(credential) = authorization.to_str().ok().and_then(bearer_credential) else {
        return unauthorized("send Authorization: Bearer <token or API key>").into_response();
    };
    let requested_tenant = request
        .headers()
        .get(TENANT_HEADER)
        .map(|value| value.to_str().unwrap_or("\u{0}").to_owned());
    let caller = match access.caller(credential, requested_tenant.as_deref()).await {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    let rate = match access.admit(&caller).await {
        Ok(rate) => rate,
        Err(refusal) => return refusal,
    };
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if let Some((policy, limit)) = rate {
        set_rate_headers(response.headers_mut(), &policy, &limit);
    }
    response
}
