//! Property: every command the domain accepts becomes an event that survives the log's
//! Avro encoding and the JSON of snapshots and answers unchanged (ADR 0017). That it is
//! also storable as PostgreSQL `jsonb` and readable through every service is the system
//! test `accepted_roundtrip`.

use chrono::{TimeZone, Utc};
use flowline_domain::accepted::strategies::{accepted_object, accepted_value, awkward_text};
use flowline_domain::{
    Aggregate, EventEnvelope, EventMetadata, SendSignal, StepSpec, SubmitWorkflow, Workflow,
    WorkflowCommand,
};
use flowline_schemas::EventCodec;
use proptest::prelude::*;
use uuid::Uuid;

fn envelope(event: flowline_domain::WorkflowEvent, version: u64) -> EventEnvelope {
    EventEnvelope {
        metadata: EventMetadata {
            event_id: Uuid::now_v7(),
            tenant: "acme".into(),
            stream_id: Uuid::nil(),
            stream_version: version,
            occurred_at: Utc.with_ymd_and_hms(2026, 12, 2, 1, 2, 3).unwrap(),
            command_id: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
            causation_id: Uuid::now_v7(),
            traceparent: None,
            tracestate: None,
        },
        event,
    }
}

/// Decides `command` on `state`, checks the event through Avro and serde, applies it.
fn accept_and_round_trip(state: &mut Workflow, command: WorkflowCommand, version: u64) {
    let event = state
        .decide(&command)
        .expect("generated commands are accepted");
    let envelope = envelope(event, version);
    let codec = EventCodec::default();
    let decoded = codec
        .decode(&codec.encode(&envelope).expect("encodes").payload)
        .expect("decodes");
    assert_eq!(decoded, envelope, "Avro round trip");
    let text = serde_json::to_string(&envelope.event).expect("serializes");
    let back: flowline_domain::WorkflowEvent = serde_json::from_str(&text).expect("parses");
    assert_eq!(back, envelope.event, "JSON round trip");
    state.apply(&envelope.event);
}

fn name() -> impl Strategy<Value = String> {
    awkward_text(60).prop_map(|text| {
        let name: String = text.chars().filter(|c| !c.is_control()).collect();
        format!("run {name}")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn accepted_submits_and_signals_survive_the_log_and_snapshots(
        name in name(),
        input in accepted_object(),
        config in accepted_object(),
        payloads in proptest::collection::vec(accepted_value(), 1..4),
    ) {
        let mut state = Workflow::default();
        let submit = SubmitWorkflow {
            name,
            input: Some(input),
            steps: vec![StepSpec {
                id: "only".into(),
                kind: "template".into(),
                depends_on: vec![],
                config: Some(config),
            }],
            timeout: None,
            subject: None,
            submitted_by: Some("ana".into()),
        };
        // Policy members are checked on their own; a generated config is not one.
        prop_assume!(submit.validate().is_ok());
        accept_and_round_trip(&mut state, WorkflowCommand::Submit(submit), 1);
        for (index, payload) in payloads.into_iter().enumerate() {
            let signal = SendSignal { name: format!("s.{index}"), payload };
            accept_and_round_trip(&mut state, WorkflowCommand::Signal(signal), 2 + index as u64);
        }
        // A snapshot is the state as JSON.
        let snapshot = serde_json::to_string(&state).expect("serializes");
        let restored: Workflow = serde_json::from_str(&snapshot).expect("parses");
        prop_assert_eq!(restored, state);
    }
}
