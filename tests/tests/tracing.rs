//! Tracing export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the command service and the
//! projectors export their spans over OTLP/HTTP, and one command's trace (from the caller's
//! `traceparent`) holds the command's spans and the projection of its event, linked
//! through the record's `traceparent` header.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use system_tests::{ServiceProcess, TestSystem, eventually, free_port};

/// One exported span, as the receiver keeps it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// A local OTLP/HTTP receiver: `POST /v1/traces` with protobuf bodies.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&spans);
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut kept = kept.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref()?.value.as_ref())
                        .map(|v| match v {
                            AnyValue::StringValue(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        kept.push(Received {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                        });
                    }
                }
                Vec::<u8>::new()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_commands_trace_holds_its_spans_and_the_projection_of_its_event() {
    let system = TestSystem::new(1).await;
    let (endpoint, spans) = receiver().await;
    let exporting = |address_variable: &str, port: u16| {
        let mut env = system.process_env();
        env.extend([
            (address_variable.to_owned(), format!("127.0.0.1:{port}")),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ]);
        env
    };
    let port = free_port();
    let commands =
        ServiceProcess::start("command-service", port, exporting("COMMAND_ADDR", port)).await;
    let port = free_port();
    let _projectors =
        ServiceProcess::start("projectors", port, exporting("PROJECTOR_ADMIN_ADDR", port)).await;

    let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let caller_span = "00f067aa0ba902b7";
    let reply = system
        .send(
            system
                .http
                .post(format!("{}/v1/workflows", commands.url))
                .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
                .json(&json!({"name": "traced", "steps": [{"id": "a", "kind": "llm"}]})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    system
        .wait_for_count("SELECT count(*) FROM workflows", 1)
        .await;

    let traced = eventually(Duration::from_secs(60), || async {
        let spans = spans.lock().unwrap().clone();
        let of_trace: Vec<Received> = spans
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let projected = of_trace
            .iter()
            .find(|s| s.service == "projectors" && s.name == "project")?;
        // The projection's parent is a span of the command service in this trace: the one
        // whose context the relay put in the record's `traceparent` header.
        let parent = of_trace
            .iter()
            .find(|s| s.service == "command-service" && s.span_id == projected.parent_span_id)?;
        Some((of_trace.clone(), parent.clone()))
    })
    .await;
    let (of_trace, parent) = traced.unwrap_or_else(|| {
        panic!(
            "no linked spans of trace {trace_id}; received: {:#?}",
            spans.lock().unwrap()
        )
    });
    assert!(
        of_trace
            .iter()
            .any(|s| s.service == "command-service" && s.parent_span_id == caller_span),
        "the command service's request span is a child of the caller's: {of_trace:#?}"
    );
    assert!(!parent.name.is_empty());
}
