//! Data flow between steps: every string of a step's config is a template (minijinja, with
//! strict undefined) over `{input, steps.<id>.output}`, rendered when an attempt starts.
//! The rendered config is the attempt's input and is recorded on its `StepStarted` event.

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

/// Config keys that are the engine's own policy, not the step's data: never rendered.
const POLICY_KEYS: [&str; 4] = ["retry", "timeout", "on_failure", "signal"];

/// Upper bound of the work rendering one step's config may do (minijinja "fuel", shared
/// out over its template strings): a template is caller input, so a loop over a huge range
/// must end with an error instead of a busy executor.
const FUEL: u64 = 2_000_000;

/// Most bytes the rendered strings of one config may have in all.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// Why a step's config could not be rendered; the step fails with it, not retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    /// `undefined_reference` or `template_error`.
    pub kind: &'static str,
    /// For a person, naming the reference and where it is.
    pub message: String,
}

/// Renders config strings.
#[derive(Debug, Default)]
pub struct Renderer;

/// One config's rendering: its environment (fuel per string) and the bytes left.
struct Rendering {
    environment: Environment<'static>,
    bytes_left: usize,
}

fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// Whether any string of `config` is a template: only then can what a step runs with, and
/// so what it makes, be derived from the run's data.
pub fn has_templates(config: &Value) -> bool {
    count_templates(config) > 0
}

fn count_templates(value: &Value) -> u64 {
    match value {
        Value::String(text) => u64::from(is_template(text)),
        Value::Array(items) => items.iter().map(count_templates).sum(),
        Value::Object(fields) => fields.values().map(count_templates).sum(),
        _ => 0,
    }
}

impl Rendering {
    fn new(templates: u64) -> Self {
        let mut environment = Environment::new();
        environment.set_undefined_behavior(UndefinedBehavior::Strict);
        environment.set_fuel(Some((FUEL / templates.max(1)).max(10_000)));
        Self {
            environment,
            bytes_left: MAX_RENDERED_BYTES,
        }
    }

    fn render_str(
        &mut self,
        template: &str,
        context: &Value,
        at: &str,
    ) -> Result<String, RenderError> {
        if !is_template(template) {
            return Ok(template.to_owned());
        }
        let rendered = self
            .environment
            .render_str(template, minijinja::value::Serde(context))
            .map_err(|error| describe(&error, template, at))?;
        self.bytes_left =
            self.bytes_left
                .checked_sub(rendered.len())
                .ok_or_else(|| RenderError {
                    kind: "template_error",
                    message: format!(
                        "{at}: the rendered config exceeds {MAX_RENDERED_BYTES} bytes"
                    ),
                })?;
        Ok(rendered)
    }

    fn render_value(
        &mut self,
        value: &Value,
        context: &Value,
        at: &str,
    ) -> Result<Value, RenderError> {
        Ok(match value {
            Value::String(text) => Value::String(self.render_str(text, context, at)?),
            Value::Array(items) => {
                let mut rendered = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    rendered.push(self.render_value(item, context, &format!("{at}[{i}]"))?);
                }
                Value::Array(rendered)
            }
            Value::Object(fields) => {
                let mut rendered = serde_json::Map::with_capacity(fields.len());
                for (key, value) in fields {
                    rendered.insert(
                        key.clone(),
                        self.render_value(value, context, &format!("{at}.{key}"))?,
                    );
                }
                Value::Object(rendered)
            }
            other => other.clone(),
        })
    }
}

impl Renderer {
    /// Renders one template string; `at` names the config field for errors.
    pub fn render_str(
        &self,
        template: &str,
        context: &Value,
        at: &str,
    ) -> Result<String, RenderError> {
        Rendering::new(1).render_str(template, context, at)
    }

    /// The config with every string (at any depth, keys excepted) rendered, except the
    /// engine's policy keys at the top level.
    pub fn render_config(&self, config: &Value, context: &Value) -> Result<Value, RenderError> {
        let mut rendering = Rendering::new(count_templates(config));
        match config {
            Value::Object(fields) => {
                let mut rendered = serde_json::Map::with_capacity(fields.len());
                for (key, value) in fields {
                    let value = if POLICY_KEYS.contains(&key.as_str()) {
                        value.clone()
                    } else {
                        rendering.render_value(value, context, &format!("config.{key}"))?
                    };
                    rendered.insert(key.clone(), value);
                }
                Ok(Value::Object(rendered))
            }
            other => rendering.render_value(other, context, "config"),
        }
    }
}

fn describe(error: &minijinja::Error, template: &str, at: &str) -> RenderError {
    // The failing expression's source text names the reference (`steps.b.output`).
    // minijinja points at the failing attribute (`.output`); widen to the whole dotted path.
    let expression = error
        .range()
        .and_then(|range| {
            let head = template.get(..range.start)?;
            let start = head
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .map_or(0, |i| i + 1);
            template.get(start..range.end)
        })
        .map(str::trim)
        .filter(|text| !text.is_empty());
    match (error.kind(), expression) {
        (ErrorKind::UndefinedError, Some(expression)) => RenderError {
            kind: "undefined_reference",
            message: format!(
                "{at}: '{expression}' is undefined (a template sees `input` and the outputs of steps that succeeded, as `steps.<id>.output`)"
            ),
        },
        (ErrorKind::UndefinedError, None) => RenderError {
            kind: "undefined_reference",
            message: format!("{at}: {error}"),
        },
        _ => RenderError {
            kind: "template_error",
            message: format!("{at}: {}", error.detail().unwrap_or(&error.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn context() -> Value {
        json!({"input": {"topic": "rust"}, "steps": {"a": {"output": "hello"}, "b": {"output": {"n": 2}}}})
    }

    #[test]
    fn strings_at_any_depth_are_rendered_and_policy_keys_are_not() {
        let rendered = Renderer
            .render_config(
                &json!({"template": "{{ steps.a.output }} {{ input.topic }}",
                        "headers": {"x-n": "{{ steps.b.output.n }}"},
                        "list": ["{{ input.topic }}", 3],
                        "retry": {"max_attempts": 2}, "timeout": "1s"}),
                &context(),
            )
            .unwrap();
        assert_eq!(
            rendered,
            json!({"template": "hello rust", "headers": {"x-n": "2"}, "list": ["rust", 3],
                   "retry": {"max_attempts": 2}, "timeout": "1s"})
        );
    }

    #[test]
    fn an_undefined_reference_names_itself_and_its_field() {
        let error = Renderer
            .render_config(
                &json!({"url": "http://x/{{ steps.missing.output }}"}),
                &context(),
            )
            .unwrap_err();
        assert_eq!(error.kind, "undefined_reference");
        assert!(error.message.contains("config.url"), "{}", error.message);
        assert!(
            error.message.contains("steps.missing.output"),
            "{}",
            error.message
        );
    }

    #[test]
    fn many_strings_share_one_budget_of_work_and_bytes() {
        let big = json!({"parts": vec!["{{ 'x' * 100000 }}"; 20]});
        let error = Renderer.render_config(&big, &context()).unwrap_err();
        assert_eq!(error.kind, "template_error");
        assert!(error.message.contains("exceeds"), "{}", error.message);
        let loops = json!({"parts": vec!["{% for i in range(50000) %}x{% endfor %}"; 100]});
        assert_eq!(
            Renderer.render_config(&loops, &context()).unwrap_err().kind,
            "template_error"
        );
    }

    #[test]
    fn a_runaway_template_ends_with_an_error() {
        let error = Renderer
            .render_str(
                "{% for i in range(100000000) %}x{% endfor %}",
                &context(),
                "config.template",
            )
            .unwrap_err();
        assert_eq!(error.kind, "template_error");
    }
}
