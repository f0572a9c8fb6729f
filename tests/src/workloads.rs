//! Step graphs shared by the executor's tests and benchmarks.

use serde_json::Value;

/// The `depends_on` of step `i` (of 10) of workload `index`: even workloads are a chain
/// s0 → s1 → … → s9, odd ones a fan-out s0 → (s1 … s8) → s9.
pub fn chain_or_fan_out(index: usize, i: usize) -> Vec<String> {
    match (index % 2, i) {
        (_, 0) => vec![],
        (0, i) => vec![format!("s{}", i - 1)],
        (_, 9) => (1..9).map(|j| format!("s{j}")).collect(),
        (_, _) => vec!["s0".into()],
    }
}

/// Ten steps `s0`..`s9` shaped by [`chain_or_fan_out`], each built by `step(id, depends_on)`.
pub fn ten_steps(index: usize, step: impl Fn(&str, Vec<String>) -> Value) -> Vec<Value> {
    (0..10)
        .map(|i| step(&format!("s{i}"), chain_or_fan_out(index, i)))
        .collect()
}
