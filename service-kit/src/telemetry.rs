//! Tracing with OpenTelemetry: spans get real W3C trace ids (so events can carry their
//! `traceparent`), and are exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber once per process; later calls do nothing (tests start
/// many services in one process). `RUST_LOG` filters, default `info`.
pub fn init(service_name: &str) {
    PROVIDER.get_or_init(|| {
        let mut builder = SdkTracerProvider::builder().with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        );
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => builder = builder.with_batch_exporter(exporter),
                Err(error) => eprintln!("OTLP exporter disabled: {error}"),
            }
        }
        let provider = builder.build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let tracer = provider.tracer("flowline");
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .try_init();
        provider
    });
}

/// Flushes spans still buffered for export.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

/// Middleware: runs the request in an `info` span that is a child of the caller's trace
/// when the request carries a `traceparent`. The parent is set before the span is first
/// entered: set later, the exported span keeps a trace of its own.
pub async fn trace_requests(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path()
    );
    if let Some(context) = remote_context(request.headers()) {
        let _ = span.set_parent(context);
    }
    next.run(request).instrument(span).await
}

fn remote_context(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (name.to_owned(), v.to_owned()))
        })
        .collect();
    carrier
        .contains_key("traceparent")
        .then(|| TraceContextPropagator::new().extract(&carrier))
}

/// Makes the current span a child of the caller's trace, when the request carried a
/// `traceparent` header, unless it already is one ([`trace_requests`] did it).
pub fn adopt_remote_parent(headers: &HeaderMap) {
    use opentelemetry::trace::TraceContextExt as _;
    if let Some(context) = remote_context(headers) {
        let current = tracing::Span::current();
        let remote_trace = context.span().span_context().trace_id();
        if current.context().span().span_context().trace_id() != remote_trace {
            let _ = current.set_parent(context);
        }
    }
}

/// Makes `span` a child of the trace named by a W3C `traceparent` (one a record carries).
pub fn adopt_traceparent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

/// The current span's W3C `traceparent` and `tracestate`, for recording on events.
pub fn current_trace_context() -> (Option<String>, Option<String>) {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    (
        carrier.remove("traceparent"),
        carrier.remove("tracestate").filter(|s| !s.is_empty()),
    )
}
