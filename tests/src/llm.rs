//! A system that runs `llm` steps: the local model server ([`crate::model_server`]), a
//! command service and an executor configured with two providers on it (one per wire
//! API: `mock-openai`, `mock-anthropic`), their keys, a `keyless` provider whose key
//! variable nobody sets, and the price table a test gives.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::model_server::{MockUsage, ModelServer, Reply};
use crate::{Running, TestSystem};

/// The `mock-openai` provider's key.
pub const OPENAI_KEY: &str = "sk-test-openai-SECRET-1234";
/// The `mock-anthropic` provider's key.
pub const ANTHROPIC_KEY: &str = "sk-ant-test-SECRET-5678";
/// A variable no test sets: the `keyless` provider's key.
pub const UNSET_KEY_VAR: &str = "FLOWLINE_TEST_UNSET_MODEL_KEY";

/// Prices of the mock models (USD per million tokens), in the OpenAI-like and
/// Anthropic-like shapes: `priced` at either provider, `budgeted` at `mock-openai`.
pub const PRICES: &str = r#"
[[price]]
provider = "mock-openai"
model = "priced"
effective_from = "2020-01-01T00:00:00Z"
input = "1.00"
output = "2.00"
cache_read = "0.50"
cache_write = "0"
reasoning = "2.00"

[[price]]
provider = "mock-anthropic"
model = "priced"
effective_from = "2020-01-01T00:00:00Z"
input = "3.00"
output = "15.00"
cache_read = "0.30"
cache_write = "3.75"
reasoning = "15.00"

[[price]]
provider = "mock-openai"
model = "budgeted"
effective_from = "2020-01-01T00:00:00Z"
input = "1"
output = "1"
cache_read = "1"
cache_write = "1"
reasoning = "1"
"#;

/// An OpenAI-shaped answer: 200 + 800 cached prompt tokens, 100 + 50 reasoning output
/// tokens. At `priced`'s prices at mock-openai: 200 × 1 + 800 × 0.5 + 100 × 2 + 50 × 2
/// = 900 per million.
pub fn openai_answer() -> Reply {
    Reply::text(
        "Hello from OpenAI",
        MockUsage {
            input: 200,
            output: 100,
            cache_read: 800,
            cache_write: 0,
            reasoning: 50,
        },
    )
}

/// An Anthropic-shaped answer. At `priced`'s prices at
/// mock-anthropic:
/// 200 × 3 + 800 × 0.3 + 100 × 3.75 + 42 × 15 = 1845 per million.
pub fn anthropic_answer() -> Reply {
    Reply::text(
        "Hello from Anthropic",
        MockUsage {
            input: 200,
            output: 42,
            cache_read: 800,
            cache_write: 100,
            reasoning: 0,
        },
    )
}

/// Writes `text` to a fresh file in the temp directory.
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).expect("temp file");
    path
}

/// The providers file naming the three providers at `base_url`.
pub fn providers_file(base_url: &str) -> String {
    format!(
        r#"
[[provider]]
name = "mock-openai"
api = "openai"
base_url = "{base_url}"
api_key_env = "MOCK_OPENAI_KEY"
request_timeout = "2s"
default_cooldown = "1s"

[[provider]]
name = "mock-anthropic"
api = "anthropic"
base_url = "{base_url}"
api_key_env = "MOCK_ANTHROPIC_KEY"
request_timeout = "2s"

[[provider]]
name = "keyless"
api = "openai"
base_url = "{base_url}"
api_key_env = "{UNSET_KEY_VAR}"
"#
    )
}

/// The step config of a one-attempt call of `model` at `provider`.
pub fn llm_config(provider: &str, model: &str) -> Value {
    json!({"provider": provider, "model": model, "prompt": "Say hello", "max_tokens": 64,
           "retry": {"max_attempts": 1}})
}

/// A model server, a command service and an executor calling it.
pub struct LlmSystem {
    /// Database, topic and helpers.
    pub system: TestSystem,
    /// The local model server.
    pub server: ModelServer,
    /// The command service.
    pub commands: Running,
    /// The executor.
    pub executor: Running,
}

impl LlmSystem {
    /// Started with the providers of [`providers_file`] and the price table `prices`.
    pub async fn start(prices: &str) -> Self {
        Self::start_with(prices, |server| providers_file(&server.url)).await
    }

    /// Started with the providers file `providers` makes and the price table `prices`.
    pub async fn start_with(prices: &str, providers: impl FnOnce(&ModelServer) -> String) -> Self {
        let system = TestSystem::new(3).await;
        let server = ModelServer::start().await;
        let commands = system.command_service().await;
        let providers = write_temp("providers.toml", &providers(&server));
        let prices = write_temp("prices.toml", prices);
        let executor = system
            .executor_with(|config| {
                config.llm.providers_file = Some(providers);
                config.llm.keys = executor::runners::llm::ProviderKeys::from([
                    ("MOCK_OPENAI_KEY", OPENAI_KEY),
                    ("MOCK_ANTHROPIC_KEY", ANTHROPIC_KEY),
                ]);
                config.price_table = Some(prices);
            })
            .await;
        Self {
            system,
            server,
            commands,
            executor,
        }
    }

    /// Submits a run of one `llm` step `ask` with `config` (in the default tenant).
    pub async fn run(&self, config: Value) -> String {
        self.run_in("default", config).await
    }

    /// Submits a run of one `llm` step `ask` with `config` in `tenant`.
    pub async fn run_in(&self, tenant: &str, config: Value) -> String {
        let body =
            json!({"name": "ask", "steps": [{"id": "ask", "kind": "llm", "config": config}]});
        self.system
            .submit_in(&self.commands.url, tenant, &body)
            .await
    }

    /// Stops the executor and the command service.
    pub async fn stop(self) {
        self.executor.stop().await;
        self.commands.stop().await;
    }
}
