use serde_json::json;

use super::*;

fn sealed_parts(text: &str) -> Envelope<'_> {
    Envelope::parse(text).expect("an envelope")
}

#[test]
fn values_round_trip_and_hide_their_text() {
    let key = DataKey::generate("acme", "ana");
    for value in [
        json!("ana@example.com"),
        json!({"n": 1.5, "l": [true, null]}),
        json!(7),
    ] {
        let sealed = key.seal(&value);
        assert!(!sealed.contains("example"), "{sealed}");
        assert_eq!(key.open(&sealed_parts(&sealed)), Ok(value));
    }
    // Random nonces: the same value seals differently every time.
    assert_ne!(key.seal(&json!("x")), key.seal(&json!("x")));
}

#[test]
fn another_tenant_or_subject_does_not_open_with_the_same_key_bytes() {
    let key = DataKey::generate("acme", "ana");
    let sealed = key.seal(&json!("secret"));
    let envelope = sealed_parts(&sealed);
    let other_tenant = DataKey {
        tenant: "globex".into(),
        subject_hash: subject_hash("globex", "ana"),
        ..key.clone()
    };
    assert_eq!(other_tenant.open(&envelope), Err(Unreadable));
    let other_subject = DataKey {
        subject_hash: subject_hash("acme", "bob"),
        ..key.clone()
    };
    assert_eq!(other_subject.open(&envelope), Err(Unreadable));
    let mut altered = envelope.sealed.to_owned();
    altered.replace_range(40..41, if &altered[40..41] == "A" { "B" } else { "A" });
    assert_eq!(
        key.open(&Envelope {
            key_id: key.id,
            sealed: &altered
        }),
        Err(Unreadable)
    );
}

async fn vault() -> Vault {
    let server = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("test_pd_{}", Uuid::new_v4().simple());
    let url = flowline_service_kit::db::with_database(&server, &name).expect("database URL");
    let pool = flowline_service_kit::db::prepare(&url, 4)
        .await
        .expect("test database");
    Vault::new(pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_made_once_per_subject_and_erasure_is_for_ever() {
    let vault = vault().await;
    let (a, b) = tokio::join!(
        vault.key_for_subject("acme", "ana"),
        vault.key_for_subject("acme", "ana")
    );
    let key = a.unwrap();
    assert_eq!(
        key.id,
        b.unwrap().id,
        "concurrent first uses agree on one key"
    );
    let bob = vault.key_for_subject("acme", "bob").await.unwrap();
    let theirs = vault.key_for_subject("globex", "ana").await.unwrap();
    assert_ne!(key.id, theirs.id);

    let mut doc = json!({"ana": key.seal(&json!({"email": "ana@x"})), "bob": bob.seal(&json!("bob@x")), "plain": 1});
    let mut opened = doc.clone();
    let met = vault.open("acme", &mut opened).await.unwrap();
    assert_eq!(
        opened,
        json!({"ana": {"email": "ana@x"}, "bob": "bob@x", "plain": 1})
    );
    assert_eq!(met.keys, BTreeSet::from([key.id, bob.id]));

    // Another tenant cannot use acme's key ids.
    let mut foreign = doc.clone();
    vault.open("globex", &mut foreign).await.unwrap();
    assert_eq!(foreign["ana"], json!(ERASED));

    assert_eq!(vault.erase_subject("acme", "ana").await.unwrap(), 1);
    assert_eq!(
        vault.erase_subject("acme", "ana").await.unwrap(),
        0,
        "idempotent"
    );
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT key FROM personal_data_keys WHERE key_id = $1")
            .bind(key.id)
            .fetch_one(&vault.pool)
            .await
            .unwrap();
    assert_eq!(stored, None, "the key bytes are gone, the tombstone stays");
    vault.open("acme", &mut doc).await.unwrap();
    assert_eq!(doc, json!({"ana": ERASED, "bob": "bob@x", "plain": 1}));

    // A later use of the subject gets a new key; the old data stays erased.
    let again = vault.key_for_subject("acme", "ana").await.unwrap();
    assert_ne!(again.id, key.id);
    let mut old = json!(key.seal(&json!("still gone")));
    vault.open("acme", &mut old).await.unwrap();
    assert_eq!(old, json!(ERASED));
}

#[tokio::test]
async fn derived_data_is_sealed_with_every_key_it_came_from() {
    let vault = vault().await;
    let ana = vault.key_for_subject("acme", "ana").await.unwrap();
    let bob = vault.key_for_subject("acme", "bob").await.unwrap();
    let keys = BTreeSet::from([ana.id, bob.id]);
    let derived = vault
        .seal_with("acme", &keys, &json!({"text": "ana and bob"}))
        .await
        .unwrap();
    assert!(!derived.to_string().contains("ana and bob"));
    let mut readable = derived.clone();
    vault.open("acme", &mut readable).await.unwrap();
    assert_eq!(readable, json!({"text": "ana and bob"}));

    vault.erase_subject("acme", "bob").await.unwrap();
    let mut erased = derived;
    vault.open("acme", &mut erased).await.unwrap();
    assert_eq!(erased, json!(ERASED));
    // Sealing with an erased key never stores the value readable.
    let late = vault
        .seal_with("acme", &keys, &json!("late"))
        .await
        .unwrap();
    assert_eq!(late, json!(ERASED));
}

#[tokio::test]
async fn events_carry_only_envelopes_for_personal_fields() {
    let vault = vault().await;
    let config: PrivacyConfig = serde_json::from_value(
        json!({"input": ["customer.email"], "signals": {"approve": ["note"]}}),
    )
    .unwrap();
    vault.set_privacy_config("acme", &config).await.unwrap();
    assert_eq!(vault.privacy_config("acme").await.unwrap(), config);
    let id = Uuid::now_v7();
    let mut event = WorkflowEvent::Submitted(flowline_domain::WorkflowSubmitted {
        name: "n".into(),
        input: json!({"customer": {"email": "c@x", "tier": "gold"}}),
        steps: vec![],
        submitted_by: Some("ana".into()),
        timeout_ms: None,
    });
    vault
        .seal_event("acme", id, &mut event, Some("customer-7"))
        .await
        .unwrap();
    let text = serde_json::to_string(&event).unwrap();
    assert!(!text.contains("c@x") && !text.contains("\"ana\""), "{text}");
    assert!(text.contains("gold"));
    let mut signal = WorkflowEvent::SignalReceived(flowline_domain::SignalReceived {
        name: "approve".into(),
        payload: json!({"note": "call c@x", "ok": true}),
    });
    vault
        .seal_event("acme", id, &mut signal, None)
        .await
        .unwrap();
    let WorkflowEvent::SignalReceived(sealed) = &signal else {
        unreachable!()
    };
    assert!(!sealed.payload.to_string().contains("c@x"));

    vault.erase_subject("acme", "customer-7").await.unwrap();
    let mut value = serde_json::to_value(&event).unwrap();
    vault.open("acme", &mut value).await.unwrap();
    assert_eq!(
        value["input"],
        json!({"customer": {"email": ERASED, "tier": "gold"}})
    );
    assert_eq!(
        value["submitted_by"],
        json!("ana"),
        "the submitter is another subject"
    );
    let mut payload = sealed.payload.clone();
    vault.open("acme", &mut payload).await.unwrap();
    assert_eq!(payload, json!({"note": ERASED, "ok": true}));
}
