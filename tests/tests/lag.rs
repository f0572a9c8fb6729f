//! Lag per projection and partition, as an operator reads it: the admin endpoint and the
//! Prometheus metric show records on the log a projection has not applied yet.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{TestSystem, eventually};

const READ_MODEL: &str = "workflow_read_model.v1";

/// `(next_offset, high_watermark, lag)` of `projection` on partition 0.
fn lag_of(rows: &Value, projection: &str) -> (i64, i64, i64) {
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["projection"] == projection && row["partition"] == 0)
        .unwrap_or_else(|| panic!("no lag row for {projection}: {rows}"));
    let field = |name: &str| row[name].as_i64().unwrap();
    (field("next_offset"), field("high_watermark"), field("lag"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_shows_what_a_stalled_projection_has_not_applied_and_drops_to_zero() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let projectors = system.projectors().await;
    let submit = || async {
        let reply = system
            .post(
                &format!("{}/v1/workflows", commands.url),
                &json!({"name": "lagging", "steps": [{"id": "a", "kind": "llm"}]}),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
    };
    submit().await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 1)
        .await;

    // Stall the read model: its next batch waits for the checkpoint row held here.
    let mut stall = system.pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM projection_checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(READ_MODEL)
        .execute(&mut *stall)
        .await
        .unwrap();
    for _ in 0..3 {
        submit().await;
    }
    let lag_url = format!("{}/admin/lag", projectors.url);
    let stalled = eventually(Duration::from_secs(30), || async {
        let rows = system.get(&lag_url).await.body;
        (lag_of(&rows, READ_MODEL) == (1, 4, 3) && lag_of(&rows, "workflow_graph.v1").2 == 0)
            .then_some(())
    })
    .await;
    assert!(
        stalled.is_some(),
        "the stalled read model lags by 3 while the graph keeps up: {}",
        system.get(&lag_url).await.body
    );
    let metrics = system
        .http
        .get(format!("{}/metrics", projectors.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "flowline_projection_lag{{projection=\"{READ_MODEL}\",partition=\"0\"}} 3\n"
        )),
        "{metrics}"
    );

    stall.rollback().await.unwrap();
    let caught_up = eventually(Duration::from_secs(30), || async {
        let rows = system.get(&lag_url).await.body;
        (lag_of(&rows, READ_MODEL) == (4, 4, 0)).then_some(())
    })
    .await;
    assert!(caught_up.is_some(), "lag back to zero once it applies them");
    assert_eq!(system.count("SELECT count(*) FROM workflows").await, 4);
}
