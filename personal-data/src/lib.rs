//! Crypto-shredding of personal data (ADR 26): per-(tenant, subject) data keys kept in
//! PostgreSQL, the sealing of personal fields before an event is stored, and their opening
//! at the edges that show them (query service, audit, executor).
//!
//! A personal value is replaced by an envelope string ([`flowline_domain::personal`]):
//! XChaCha20-Poly1305 over the value's JSON text, with a random 192-bit nonce, under the
//! subject's data key, with the tenant, the subject's hash and the key id as associated
//! data. Destroying the key ([`Vault::erase_subject`]) makes every copy of every such value
//! (log, event store, snapshots, read models, graph, payload table, every rebuild) read as
//! [`ERASED`], while the stored bytes, and so the hash chain of ADR 9, stay the same.
//!
//! Keys are never cached in memory beyond one call, so an erasure holds at once for every
//! reader of every instance.

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use flowline_domain::WorkflowEvent;
use flowline_domain::personal::{
    ERASED, Envelope, PrivacyConfig, UNREADABLE, for_each_at_path, is_envelope, run_subject,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Why personal data could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key store could not be read or written.
    #[error("personal data keys: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored privacy config does not parse (it was validated when it was set).
    #[error("privacy config of tenant {tenant}: {message}")]
    Config {
        /// The tenant.
        tenant: String,
        /// What is wrong.
        message: String,
    },
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Nonce bytes of XChaCha20-Poly1305: large enough that random nonces never repeat.
const NONCE_BYTES: usize = 24;

/// Most layers of envelopes one value is opened through (derived data is sealed once per
/// subject it came from, ADR 26); anything deeper reads as unreadable.
const MAX_LAYERS: usize = 8;

/// SHA-256 of the subject within its tenant: how the key table finds a subject's key
/// without storing who the subject is.
pub fn subject_hash(tenant: &str, subject: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"flowline-subject-v1\0");
    hash.update((tenant.len() as u32).to_be_bytes());
    hash.update(tenant.as_bytes());
    hash.update(subject.as_bytes());
    hash.finalize().into()
}

/// One subject's live data key.
#[derive(Clone)]
pub struct DataKey {
    id: Uuid,
    tenant: String,
    subject_hash: [u8; 32],
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Why an envelope did not open with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the value does not decrypt with its key")]
pub struct Unreadable;

impl DataKey {
    /// A fresh random key for `subject` of `tenant`.
    pub fn generate(tenant: &str, subject: &str) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        Self {
            id: Uuid::now_v7(),
            tenant: tenant.to_owned(),
            subject_hash: subject_hash(tenant, subject),
            key,
        }
    }

    /// Its id (what envelopes name).
    pub fn id(&self) -> Uuid {
        self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(&self.key[..]).expect("keys are 32 bytes")
    }

    /// What binds a ciphertext to its place: a value sealed for one tenant or subject does
    /// not open as another's even with the same key bytes.
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(80 + self.tenant.len());
        aad.extend_from_slice(b"flowline-pd-v1\0");
        aad.extend_from_slice(&(self.tenant.len() as u32).to_be_bytes());
        aad.extend_from_slice(self.tenant.as_bytes());
        aad.extend_from_slice(&self.subject_hash);
        aad.extend_from_slice(self.id.as_bytes());
        aad
    }

    /// The envelope of `value`.
    pub fn seal(&self, value: &Value) -> String {
        let plaintext = Zeroizing::new(serde_json::to_vec(value).expect("JSON values serialize"));
        let cipher = self.cipher();
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = self.associated_data();
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_slice(),
                    aad: &aad,
                },
            )
            .expect("encryption of in-memory data does not fail");
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Envelope::format(self.id, &URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The value `envelope` holds.
    pub fn open(&self, envelope: &Envelope<'_>) -> Result<Value, Unreadable> {
        if envelope.key_id != self.id {
            return Err(Unreadable);
        }
        let sealed = URL_SAFE_NO_PAD
            .decode(envelope.sealed)
            .map_err(|_| Unreadable)?;
        if sealed.len() < NONCE_BYTES {
            return Err(Unreadable);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let cipher = self.cipher();
        let aad = self.associated_data();
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(<[u8; NONCE_BYTES]>::try_from(nonce).map_err(|_| Unreadable)?),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| Unreadable)?,
        );
        serde_json::from_slice(&plaintext).map_err(|_| Unreadable)
    }
}

/// A key as the table holds it.
#[derive(Debug, Clone)]
enum KeyState {
    Live(DataKey),
    Erased,
}

/// What opening a value met.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// Whether the value held any personal data (opened or erased).
    pub personal: bool,
    /// The live keys whose envelopes were opened: what data derived from the value must be
    /// sealed with again.
    pub keys: BTreeSet<Uuid>,
}

/// The key store and the sealing and opening of personal fields.
#[derive(Debug, Clone)]
pub struct Vault {
    pool: PgPool,
}

impl Vault {
    /// The vault on the database holding `personal_data_keys` (migration 27).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// `subject`'s live key, created on first use. Concurrent first uses agree on one key
    /// (the partial unique index decides); after an erasure a new key is made, so data
    /// sealed before stays erased.
    pub async fn key_for_subject(&self, tenant: &str, subject: &str) -> Result<DataKey> {
        let hash = subject_hash(tenant, subject);
        loop {
            let fresh = DataKey::generate(tenant, subject);
            // One round trip: the insert wins, or the live key committed before is read.
            let live: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
                "WITH made AS ( \
                     INSERT INTO personal_data_keys (key_id, tenant, subject_hash, key) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (tenant, subject_hash) WHERE erased_at IS NULL DO NOTHING \
                     RETURNING key_id, key) \
                 SELECT key_id, key FROM made \
                 UNION ALL \
                 SELECT key_id, key FROM personal_data_keys \
                 WHERE tenant = $2 AND subject_hash = $3 AND erased_at IS NULL \
                 LIMIT 1",
            )
            .bind(fresh.id)
            .bind(tenant)
            .bind(&hash[..])
            .bind(&fresh.key[..])
            .fetch_optional(&self.pool)
            .await?;
            // None: a concurrent first use committed after this statement's snapshot, or the
            // key was erased meanwhile; the next round reads or makes it.
            if let Some((id, key)) = live
                && let Some(key) = key_bytes(key)
            {
                return Ok(DataKey {
                    id,
                    tenant: tenant.to_owned(),
                    subject_hash: hash,
                    key,
                });
            }
        }
    }

    async fn keys(&self, tenant: &str, ids: &[Uuid]) -> Result<HashMap<Uuid, KeyState>> {
        let rows: Vec<(Uuid, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT key_id, subject_hash, key FROM personal_data_keys \
             WHERE tenant = $1 AND key_id = ANY($2)",
        )
        .bind(tenant)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, hash, key)| {
                let state = match (key.and_then(key_bytes), <[u8; 32]>::try_from(hash)) {
                    (Some(key), Ok(subject_hash)) => KeyState::Live(DataKey {
                        id,
                        tenant: tenant.to_owned(),
                        subject_hash,
                        key,
                    }),
                    _ => KeyState::Erased,
                };
                (id, state)
            })
            .collect())
    }

    /// Destroys `subject`'s key: every value sealed with it reads as erased from now on.
    /// Returns how many keys were destroyed (0: unknown or already erased; erasing is
    /// idempotent). The row stays, without its key, as the record of the erasure.
    pub async fn erase_subject(&self, tenant: &str, subject: &str) -> Result<u64> {
        let hash = subject_hash(tenant, subject);
        let erased = sqlx::query(
            "UPDATE personal_data_keys SET key = NULL, erased_at = now() \
             WHERE tenant = $1 AND subject_hash = $2 AND erased_at IS NULL",
        )
        .bind(tenant)
        .bind(&hash[..])
        .execute(&self.pool)
        .await?
        .rows_affected();
        if erased > 0 {
            tracing::info!(tenant, keys = erased, "personal data subject erased");
        }
        Ok(erased)
    }

    /// The tenant's privacy config (empty when never set: only `submitted_by` is personal).
    pub async fn privacy_config(&self, tenant: &str) -> Result<PrivacyConfig> {
        let stored: Option<Value> =
            sqlx::query_scalar("SELECT config FROM privacy_configs WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        stored
            .map(serde_json::from_value)
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|error| Error::Config {
                tenant: tenant.to_owned(),
                message: error.to_string(),
            })
    }

    /// Replaces the tenant's privacy config (validated by the caller); it applies to
    /// events appended from now on, not to those already stored.
    pub async fn set_privacy_config(&self, tenant: &str, config: &PrivacyConfig) -> Result<()> {
        sqlx::query(
            "INSERT INTO privacy_configs (tenant, config, updated_at) VALUES ($1, $2, now()) \
             ON CONFLICT (tenant) DO UPDATE SET config = EXCLUDED.config, updated_at = now()",
        )
        .bind(tenant)
        .bind(serde_json::to_value(config).expect("configs serialize"))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces every envelope in `value` by what it holds, or by [`ERASED`] when its key
    /// was destroyed (or is not the tenant's), or [`UNREADABLE`] when it does not decrypt.
    pub async fn open(&self, tenant: &str, value: &mut Value) -> Result<Opened> {
        let mut opened = Opened::default();
        let mut known: HashMap<Uuid, KeyState> = HashMap::new();
        for _ in 0..MAX_LAYERS {
            let mut ids = BTreeSet::new();
            key_ids(value, &mut ids);
            if ids.is_empty() {
                return Ok(opened);
            }
            opened.personal = true;
            let missing: Vec<Uuid> = ids
                .into_iter()
                .filter(|id| !known.contains_key(id))
                .collect();
            if !missing.is_empty() {
                let found = self.keys(tenant, &missing).await?;
                for id in missing {
                    let state = found.get(&id).cloned().unwrap_or(KeyState::Erased);
                    known.insert(id, state);
                }
            }
            replace(value, &mut |text| {
                let envelope = Envelope::parse(text)?;
                Some(match known.get(&envelope.key_id) {
                    Some(KeyState::Live(key)) => match key.open(&envelope) {
                        Ok(plain) => {
                            opened.keys.insert(key.id);
                            plain
                        }
                        Err(Unreadable) => Value::from(UNREADABLE),
                    },
                    _ => Value::from(ERASED),
                })
            });
        }
        replace(value, &mut |text| {
            is_envelope(text).then(|| Value::from(UNREADABLE))
        });
        Ok(opened)
    }

    /// `value` sealed with every key of `keys` in turn (data derived from several
    /// subjects' data is erased when any of them is); [`ERASED`] when one of them is
    /// destroyed already, so derived data is never stored readable after an erasure.
    pub async fn seal_with(
        &self,
        tenant: &str,
        keys: &BTreeSet<Uuid>,
        value: &Value,
    ) -> Result<Value> {
        if keys.is_empty() {
            return Ok(value.clone());
        }
        let ids: Vec<Uuid> = keys.iter().copied().collect();
        let found = self.keys(tenant, &ids).await?;
        let mut sealed = value.clone();
        for id in ids {
            match found.get(&id) {
                Some(KeyState::Live(key)) => sealed = Value::String(key.seal(&sealed)),
                _ => return Ok(Value::from(ERASED)),
            }
        }
        Ok(sealed)
    }

    /// Seals the personal fields of an event a caller's command decided, before it is
    /// stored: `submitted_by` with the submitter's key, the input fields the tenant's
    /// config marks with the run's data subject's key (`subject`, else the submitter, else
    /// the run itself), the marked fields of a signal with the key of its run's subject.
    pub async fn seal_event(
        &self,
        tenant: &str,
        workflow_id: Uuid,
        event: &mut WorkflowEvent,
        subject: Option<&str>,
    ) -> Result<()> {
        match event {
            WorkflowEvent::Submitted(submitted) => {
                let config = self.privacy_config(tenant).await?;
                let run_subject = subject
                    .map(str::to_owned)
                    .or_else(|| submitted.submitted_by.clone())
                    .unwrap_or_else(|| run_subject(workflow_id));
                let run_key = self.key_for_subject(tenant, &run_subject).await?;
                if let Some(principal) = submitted.submitted_by.take() {
                    let key = if principal == run_subject {
                        run_key.clone()
                    } else {
                        self.key_for_subject(tenant, &principal).await?
                    };
                    submitted.submitted_by = Some(key.seal(&Value::String(principal)));
                }
                for path in &config.input {
                    for_each_at_path(&mut submitted.input, path, &mut |node| {
                        *node = Value::String(run_key.seal(node));
                    });
                }
                sqlx::query(
                    "INSERT INTO personal_data_runs (workflow_id, tenant, key_id) \
                     VALUES ($1, $2, $3) ON CONFLICT (workflow_id) DO NOTHING",
                )
                .bind(workflow_id)
                .bind(tenant)
                .bind(run_key.id)
                .execute(&self.pool)
                .await?;
            }
            WorkflowEvent::SignalReceived(signal) => {
                let config = self.privacy_config(tenant).await?;
                let paths: Vec<&String> = config.signal_paths(&signal.name).collect();
                let mut present = false;
                for path in &paths {
                    for_each_at_path(&mut signal.payload, path, &mut |_| present = true);
                }
                if !present {
                    return Ok(());
                }
                let key = self.run_key(tenant, workflow_id).await?;
                for path in paths {
                    for_each_at_path(&mut signal.payload, path, &mut |node| {
                        *node = match &key {
                            KeyState::Live(key) => Value::String(key.seal(node)),
                            KeyState::Erased => Value::from(ERASED),
                        };
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The key of the run's data subject, as recorded at submit (a run submitted before
    /// keys existed gets one of its own now).
    async fn run_key(&self, tenant: &str, workflow_id: Uuid) -> Result<KeyState> {
        let recorded: Option<Uuid> = sqlx::query_scalar(
            "SELECT key_id FROM personal_data_runs WHERE workflow_id = $1 AND tenant = $2",
        )
        .bind(workflow_id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        match recorded {
            Some(id) => Ok(self
                .keys(tenant, &[id])
                .await?
                .remove(&id)
                .unwrap_or(KeyState::Erased)),
            None => {
                let key = self
                    .key_for_subject(tenant, &run_subject(workflow_id))
                    .await?;
                sqlx::query(
                    "INSERT INTO personal_data_runs (workflow_id, tenant, key_id) \
                     VALUES ($1, $2, $3) ON CONFLICT (workflow_id) DO NOTHING",
                )
                .bind(workflow_id)
                .bind(tenant)
                .bind(key.id)
                .execute(&self.pool)
                .await?;
                Ok(KeyState::Live(key))
            }
        }
    }
}

fn key_bytes(bytes: Vec<u8>) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(bytes);
    <[u8; 32]>::try_from(bytes.as_slice())
        .ok()
        .map(Zeroizing::new)
}

fn key_ids(value: &Value, ids: &mut BTreeSet<Uuid>) {
    match value {
        Value::String(text) => {
            if let Some(envelope) = Envelope::parse(text) {
                ids.insert(envelope.key_id);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| key_ids(item, ids)),
        Value::Object(members) => members.values().for_each(|member| key_ids(member, ids)),
        _ => {}
    }
}

/// Replaces every string for which `with` has a value.
fn replace(value: &mut Value, with: &mut impl FnMut(&str) -> Option<Value>) {
    match value {
        Value::String(text) => {
            if let Some(replacement) = with(text) {
                *value = replacement;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| replace(item, with)),
        Value::Object(members) => members
            .values_mut()
            .for_each(|member| replace(member, with)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
