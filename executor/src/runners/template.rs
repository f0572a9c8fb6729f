//! `template` steps: the output is `config.template`, rendered (the executor renders every
//! config string before the attempt, so the runner only picks the field).

use futures::future::BoxFuture;
use serde_json::Value;

use super::{AttemptFailure, AttemptInput, StepOutput, StepRunner};

/// Runs `template` steps.
#[derive(Debug, Clone, Copy)]
pub struct TemplateRunner;

impl StepRunner for TemplateRunner {
    fn run(&self, attempt: AttemptInput) -> BoxFuture<'static, Result<StepOutput, AttemptFailure>> {
        let output = match attempt.input.get("template") {
            Some(Value::String(text)) => Ok(Value::String(text.clone()).into()),
            _ => Err(AttemptFailure::permanent(
                "invalid_config",
                "a template step needs `config.template`, a string",
            )),
        };
        Box::pin(async move { output })
    }
}
