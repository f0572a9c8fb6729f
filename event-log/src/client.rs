//! The settings every client of the log starts from: the bootstrap servers, plus the
//! librdkafka properties an operator passes through for their cluster (TLS, SASL,
//! timeouts, client ids), so that a secured cluster works without a code change.
//!
//! Passed-through properties come from `KAFKA_CONFIG_FILE` (a Java-properties style file:
//! `name=value` lines, `#` comments) and then from every `KAFKA_PROPERTY_<NAME>` variable
//! (`KAFKA_PROPERTY_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`: the name is
//! lower-cased, `_` becomes `.`, and `__` stands for a literal `_`). Variables win over
//! the file. Producers, consumers and admin clients all get them; the settings the engine's
//! guarantees rest on (idempotence, `acks=all`, no auto-commit, …) are set after them and
//! cannot be overridden.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rdkafka::ClientConfig;

/// Prefix of the environment variables passed through as librdkafka properties.
pub const PROPERTY_PREFIX: &str = "KAFKA_PROPERTY_";
/// Environment variable naming a file of librdkafka properties.
pub const CONFIG_FILE_VARIABLE: &str = "KAFKA_CONFIG_FILE";

/// Why the passed-through settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The file named by `KAFKA_CONFIG_FILE` could not be read.
    #[error("{CONFIG_FILE_VARIABLE} {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the file is not `name=value`.
    #[error("{CONFIG_FILE_VARIABLE} line {line}: expected name=value")]
    Malformed {
        /// The line number (from 1).
        line: usize,
    },
}

/// A base configuration for a client of `brokers` with the process's passed-through
/// properties applied.
///
/// # Panics
/// When `KAFKA_CONFIG_FILE` names a file that cannot be read or parsed: connecting without
/// the operator's security settings would only fail later, less clearly.
pub fn client_config(brokers: &str) -> ClientConfig {
    static PASSED_THROUGH: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    let properties = PASSED_THROUGH.get_or_init(|| {
        from_environment().unwrap_or_else(|error| panic!("Kafka client settings: {error}"))
    });
    with_properties(brokers, properties)
}

/// A configuration for `brokers` with `properties` applied.
pub fn with_properties(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (name, value) in properties {
        config.set(name, value);
    }
    config
}

/// The properties passed through by this process's environment.
pub fn from_environment() -> Result<BTreeMap<String, String>, PassthroughError> {
    let file = match std::env::var(CONFIG_FILE_VARIABLE) {
        Ok(path) if !path.is_empty() => Some(
            std::fs::read_to_string(&path)
                .map_err(|source| PassthroughError::Unreadable { path, source })?,
        ),
        _ => None,
    };
    passthrough(file.as_deref(), std::env::vars())
}

/// The properties of a config file's text and of the `KAFKA_PROPERTY_*` among `variables`
/// (which win).
pub fn passthrough(
    file: Option<&str>,
    variables: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, PassthroughError> {
    let mut properties = BTreeMap::new();
    for (number, line) in file.unwrap_or_default().lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .ok_or(PassthroughError::Malformed { line: number + 1 })?;
        properties.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    for (variable, value) in variables {
        if let Some(name) = variable.strip_prefix(PROPERTY_PREFIX)
            && !name.is_empty()
        {
            properties.insert(property_name(name), value);
        }
    }
    Ok(properties)
}

/// `SSL_CA_LOCATION` → `ssl.ca.location`; `__` keeps a literal `_`.
fn property_name(variable: &str) -> String {
    variable
        .split("__")
        .map(|part| part.to_lowercase().replace('_', "."))
        .collect::<Vec<_>>()
        .join("_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;

    fn variables(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_and_the_file_reach_the_client_configuration() {
        let file = "# a secured cluster\nsecurity.protocol=SSL\nsasl.mechanism = PLAIN\n\nclient.id=from-file\n";
        let properties = passthrough(
            Some(file),
            variables(&[
                ("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KAFKA_PROPERTY_SASL_USERNAME", "flowline"),
                ("KAFKA_PROPERTY_SSL_CA_LOCATION", "/etc/kafka/ca.pem"),
                (
                    "KAFKA_PROPERTY_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
                    "none",
                ),
                ("KAFKA_BROKERS", "not a property"),
            ]),
        )
        .unwrap();
        let config = with_properties("broker:9093", &properties);
        assert_eq!(config.get("bootstrap.servers"), Some("broker:9093"));
        assert_eq!(
            config.get("security.protocol"),
            Some("SASL_SSL"),
            "variables win"
        );
        assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(config.get("sasl.username"), Some("flowline"));
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
        assert_eq!(
            config.get("ssl.endpoint.identification.algorithm"),
            Some("none")
        );
        assert_eq!(config.get("client.id"), Some("from-file"));
        assert_eq!(config.get("brokers"), None);
    }

    #[test]
    fn a_literal_underscore_is_written_twice() {
        assert_eq!(
            property_name("SASL_OAUTHBEARER_CONFIG"),
            "sasl.oauthbearer.config"
        );
        assert_eq!(property_name("SOME__NAME"), "some_name");
    }

    #[test]
    fn a_malformed_file_is_refused_naming_the_line() {
        let error = passthrough(Some("a=b\nnonsense\n"), Vec::new()).unwrap_err();
        assert!(
            matches!(error, PassthroughError::Malformed { line: 2 }),
            "{error}"
        );
    }

    /// librdkafka refuses TLS and SASL settings it was built without: creating clients
    /// with them proves the build can talk to a secured cluster.
    #[test]
    fn the_client_library_accepts_tls_and_sasl_settings() {
        let properties = passthrough(
            None,
            variables(&[
                ("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KAFKA_PROPERTY_SASL_MECHANISM", "SCRAM-SHA-512"),
                ("KAFKA_PROPERTY_SASL_USERNAME", "flowline"),
                ("KAFKA_PROPERTY_SASL_PASSWORD", "secret"),
            ]),
        )
        .unwrap();
        let mut config = with_properties("127.0.0.1:1", &properties);
        config.set("group.id", "passthrough-test");
        let consumer: Result<BaseConsumer, _> = config.create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
        let producer: Result<BaseProducer, _> = config.create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }
}
