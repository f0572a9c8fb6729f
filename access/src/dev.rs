//! Development credentials: an HS256 signing key in a JWKS file and tokens signed with it,
//! for a laptop and for the tests. Production tokens come from an identity provider.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng;
use serde::Serialize;

use crate::Role;

/// Why a development key or token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key file holds no HS256 key this module can sign with.
    #[error("{0}: no HS256 (`oct`) key to sign with")]
    NoSigningKey(String),
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// An HS256 key: the secret and its key id.
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// `kid`.
    pub kid: String,
    /// The secret (at least 32 bytes).
    pub secret: Vec<u8>,
}

/// The claims of a token this module makes.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Tenant (the default tenant claim).
    pub tenant: String,
    /// Roles (the default roles claim).
    pub roles: Vec<String>,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Claims for `subject` in `tenant` with `role`, valid from now for `ttl`.
    pub fn new(subject: &str, tenant: &str, role: Role, ttl: Duration) -> Self {
        let now = Utc::now().timestamp();
        Self {
            sub: subject.to_owned(),
            tenant: tenant.to_owned(),
            roles: vec![role.as_str().to_owned()],
            iat: now,
            nbf: now,
            exp: now + ttl.num_seconds(),
            iss: None,
            aud: None,
        }
    }
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            secret: rand::rng().random::<[u8; 32]>().to_vec(),
        }
    }

    /// The JWKS document holding this key (it is the secret: keep the file private).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "oct",
            "kid": self.kid,
            "alg": "HS256",
            "use": "sig",
            "k": URL_SAFE_NO_PAD.encode(&self.secret),
        }]})
    }

    /// The first HS256 key of the JWKS file at `path`.
    pub fn read(path: &Path) -> Result<Self, DevError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| DevError::File {
            path: shown.clone(),
            source,
        })?;
        let document: serde_json::Value =
            serde_json::from_slice(&text).map_err(|_| DevError::NoSigningKey(shown.clone()))?;
        document["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|key| key["kty"] == "oct")
            .find_map(|key| {
                let secret = URL_SAFE_NO_PAD.decode(key["k"].as_str()?).ok()?;
                Some(Self {
                    kid: key["kid"].as_str().unwrap_or_default().to_owned(),
                    secret,
                })
            })
            .ok_or(DevError::NoSigningKey(shown))
    }

    /// Writes the JWKS file at `path` (readable by its owner only).
    pub fn write(&self, path: &Path) -> Result<(), DevError> {
        let failed = |source| DevError::File {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&self.jwks()).expect("JSON"))
            .map_err(failed)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(failed)?;
        }
        Ok(())
    }

    /// A token with `claims`, signed with this key.
    pub fn sign(&self, claims: &Claims) -> Result<String, DevError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(&self.secret),
        )?)
    }
}
