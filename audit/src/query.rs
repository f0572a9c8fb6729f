//! Selecting events by tenant, stream, type and time.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::record::AuditRecord;

/// Which events to select; every criterion is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this stream.
    pub stream: Option<Uuid>,
    /// Only this event type (`WorkflowSubmitted`) or CloudEvents type
    /// (`ai.flowline.workflow.WorkflowSubmitted.v2`).
    pub event_type: Option<String>,
    /// Only events that occurred at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events that occurred at or before this time.
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether `record` is selected.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let type_matches = |wanted: &String| {
            *wanted == record.event_type
                || record
                    .headers
                    .get(flowline_event_store::headers::cloudevents::TYPE)
                    .is_some_and(|ce_type| ce_type == wanted)
        };
        self.tenant.as_ref().is_none_or(|t| *t == record.tenant)
            && self.stream.is_none_or(|s| s == record.stream_id)
            && self.event_type.as_ref().is_none_or(type_matches)
            && self.since.is_none_or(|since| record.occurred_at >= since)
            && self.until.is_none_or(|until| record.occurred_at <= until)
    }
}

/// Parses an RFC 3339 time, naming `flag` when it is not one.
pub fn parse_time(flag: &str, text: &str) -> Result<DateTime<Utc>, String> {
    let time = DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| format!("{flag}: not an RFC 3339 time: {text:?}"))?;
    // The log's timestamps count milliseconds from 1970; the broker refuses earlier ones.
    if time.timestamp_millis() < 0 {
        return Err(format!(
            "{flag}: before 1970-01-01, where the log's timestamps start"
        ));
    }
    Ok(time)
}
