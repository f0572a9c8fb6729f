//! The Dgraph adapter: DQL over Dgraph's HTTP API. `/alter` installs the schema (additive,
//! safe at every start); `/mutate?commitNow=true` upsert blocks keyed by the `xid`
//! predicate (`@index(exact) @upsert`) write nodes and edges, retried when Dgraph aborts
//! a conflicting transaction; `/query` reads with DQL.
//!
//! The request bodies are built by pure functions, checked by golden tests; there is no
//! Dgraph server on the development machines (see the README).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};
use tracing::warn;
use uuid::Uuid;

use crate::change::{GraphChange, RunChange, finished_step_statuses, xid};
use crate::{Direction, Error, GraphStore, Result, RunPage, RunRef, StepRef, Usage};

/// The schema sent to `/alter`.
pub const SCHEMA: &str = "\
xid: string @index(exact) @upsert .
kind: string @index(exact) .
tenant: string @index(exact) .
name: string @index(exact) .
status: string .
version: int .
started: bool .
has_step: [uid] @reverse .
depends_on: [uid] @reverse .
calls_tool: [uid] @reverse .
uses_model: [uid] @reverse .
submitted_by: [uid] @reverse .

type Run {
  xid
  kind
  tenant
  name
  status
  version
  started
  has_step
  submitted_by
}

type Step {
  xid
  kind
  tenant
  name
  status
  depends_on
  calls_tool
  uses_model
}

type Tool {
  xid
  kind
  tenant
  name
}

type Model {
  xid
  kind
  tenant
  name
}

type Principal {
  xid
  kind
  tenant
  name
}
";

/// Attempts of a mutation Dgraph keeps aborting.
const MUTATION_ATTEMPTS: u32 = 5;

fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

fn node(
    var: &str,
    xid: &str,
    dgraph_type: &str,
    tenant: &str,
    name: &str,
) -> serde_json::Map<String, Value> {
    let mut node = serde_json::Map::new();
    node.insert("uid".into(), json!(format!("uid({var})")));
    node.insert("xid".into(), json!(xid));
    node.insert("dgraph.type".into(), json!(dgraph_type));
    node.insert("kind".into(), json!(dgraph_type.to_lowercase()));
    node.insert("tenant".into(), json!(tenant));
    node.insert("name".into(), json!(name));
    node
}

fn uid_of(var: &str) -> Value {
    json!({ "uid": format!("uid({var})") })
}

/// The `/mutate` body (an upsert block) for one change.
pub fn mutation(change: &GraphChange) -> Value {
    let run = xid::run(change.run);
    let version = change.version;
    match &change.change {
        RunChange::Submitted {
            name,
            steps,
            submitted_by,
        } => {
            // Variables: the run, each step, and each distinct tool, model and principal.
            let mut lookups = vec![format!("run as var(func: eq(xid, {}))", quoted(&run))];
            let step_var: BTreeMap<&str, String> = steps
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id.as_str(), format!("s{i}")))
                .collect();
            for step in steps {
                lookups.push(format!(
                    "{} as var(func: eq(xid, {}))",
                    step_var[step.id.as_str()],
                    quoted(&xid::step(change.run, &step.id))
                ));
            }
            let tools: BTreeSet<&str> = steps.iter().filter_map(|s| s.tool.as_deref()).collect();
            let models: BTreeSet<&str> = steps.iter().filter_map(|s| s.model.as_deref()).collect();
            let tool_var: BTreeMap<&str, String> = tools
                .iter()
                .enumerate()
                .map(|(i, t)| (*t, format!("t{i}")))
                .collect();
            let model_var: BTreeMap<&str, String> = models
                .iter()
                .enumerate()
                .map(|(i, m)| (*m, format!("m{i}")))
                .collect();
            let mut set = Vec::new();
            for (tool, var) in &tool_var {
                let xid = xid::tool(&change.tenant, tool);
                lookups.push(format!("{var} as var(func: eq(xid, {}))", quoted(&xid)));
                set.push(Value::Object(node(var, &xid, "Tool", &change.tenant, tool)));
            }
            for (model, var) in &model_var {
                let xid = xid::model(&change.tenant, model);
                lookups.push(format!("{var} as var(func: eq(xid, {}))", quoted(&xid)));
                set.push(Value::Object(node(
                    var,
                    &xid,
                    "Model",
                    &change.tenant,
                    model,
                )));
            }
            let mut run_node = node("run", &run, "Run", &change.tenant, name);
            run_node.insert("status".into(), json!("pending"));
            run_node.insert("version".into(), json!(version));
            run_node.insert(
                "has_step".into(),
                Value::Array(
                    steps
                        .iter()
                        .map(|s| uid_of(&step_var[s.id.as_str()]))
                        .collect(),
                ),
            );
            if let Some(principal) = submitted_by {
                let xid = xid::principal(&change.tenant, principal);
                lookups.push(format!("p as var(func: eq(xid, {}))", quoted(&xid)));
                set.push(Value::Object(node(
                    "p",
                    &xid,
                    "Principal",
                    &change.tenant,
                    principal,
                )));
                run_node.insert("submitted_by".into(), uid_of("p"));
            }
            for step in steps {
                let var = &step_var[step.id.as_str()];
                let mut step_node = node(
                    var,
                    &xid::step(change.run, &step.id),
                    "Step",
                    &change.tenant,
                    &step.id,
                );
                step_node.insert("status".into(), json!("pending"));
                if !step.depends_on.is_empty() {
                    step_node.insert(
                        "depends_on".into(),
                        Value::Array(
                            step.depends_on
                                .iter()
                                .filter_map(|d| step_var.get(d.as_str()))
                                .map(|v| uid_of(v))
                                .collect(),
                        ),
                    );
                }
                if let Some(tool) = &step.tool {
                    step_node.insert("calls_tool".into(), uid_of(&tool_var[tool.as_str()]));
                }
                if let Some(model) = &step.model {
                    step_node.insert("uses_model".into(), uid_of(&model_var[model.as_str()]));
                }
                set.push(Value::Object(step_node));
            }
            set.insert(0, Value::Object(run_node));
            json!({
                "query": format!("{{\n  {}\n}}", lookups.join("\n  ")),
                "mutations": [{ "cond": "@if(eq(len(run), 0))", "set": set }],
            })
        }
        RunChange::Status(status) => run_update(&run, version, json!({ "status": status })),
        RunChange::Started => run_update(
            &run,
            version,
            json!({ "status": "running", "started": true }),
        ),
        RunChange::Touched => run_update(&run, version, json!({})),
        RunChange::Stopped(status) => {
            // The run's steps that are not finished yet, found only when the run takes
            // the change (its version is older).
            let finished =
                serde_json::to_string(&finished_step_statuses()).expect("strings serialize");
            json!({
                "query": format!(
                    "{{\n  run as var(func: eq(xid, {})) @filter(lt(version, {version})) {{\n    \
                     unfinished as has_step @filter(NOT eq(status, {finished}))\n  }}\n}}",
                    quoted(&run)
                ),
                "mutations": [
                    {
                        "cond": "@if(eq(len(run), 1))",
                        "set": [{ "uid": "uid(run)", "status": status, "version": version }],
                    },
                    {
                        "cond": "@if(eq(len(run), 1) AND gt(len(unfinished), 0))",
                        "set": [{ "uid": "uid(unfinished)", "status": "cancelled" }],
                    },
                ],
            })
        }
        RunChange::StepStatus { step, status } => json!({
            "query": format!(
                "{{\n  run as var(func: eq(xid, {})) @filter(lt(version, {version})) {{\n    \
                 step as has_step @filter(eq(xid, {}))\n  }}\n}}",
                quoted(&run),
                quoted(&xid::step(change.run, step))
            ),
            "mutations": [
                {
                    "cond": "@if(eq(len(run), 1))",
                    "set": [{ "uid": "uid(run)", "version": version }],
                },
                {
                    "cond": "@if(eq(len(run), 1) AND eq(len(step), 1))",
                    "set": [{ "uid": "uid(step)", "status": status }],
                },
            ],
        }),
        RunChange::StepRetried { step } => json!({
            "query": format!(
                "{{\n  run as var(func: eq(xid, {})) @filter(lt(version, {version})) {{\n    \
                 again as has_step @filter(eq(xid, {}) OR eq(status, \"cancelled\"))\n  }}\n}}",
                quoted(&run),
                quoted(&xid::step(change.run, step))
            ),
            "mutations": [
                {
                    "cond": "@if(eq(len(run), 1))",
                    "set": [{ "uid": "uid(run)", "status": "running", "version": version }],
                },
                {
                    "cond": "@if(eq(len(run), 1) AND gt(len(again), 0))",
                    "set": [{ "uid": "uid(again)", "status": "pending" }],
                },
            ],
        }),
        RunChange::Resumed => json!({
            "query": format!(
                "{{\n  run as var(func: eq(xid, {})) @filter(lt(version, {version}))\n  \
                 begun as var(func: uid(run)) @filter(eq(started, true))\n}}",
                quoted(&run)
            ),
            "mutations": [
                {
                    "cond": "@if(eq(len(run), 1) AND eq(len(begun), 1))",
                    "set": [{ "uid": "uid(run)", "status": "running", "version": version }],
                },
                {
                    "cond": "@if(eq(len(run), 1) AND eq(len(begun), 0))",
                    "set": [{ "uid": "uid(run)", "status": "pending", "version": version }],
                },
            ],
        }),
    }
}

/// An upsert setting `fields` and the version on the run node, if the run is older than
/// `version`. A variable that matched nothing would make `uid(run)` a new node, hence the
/// condition.
fn run_update(run: &str, version: u64, fields: Value) -> Value {
    let mut set = serde_json::Map::new();
    set.insert("uid".into(), json!("uid(run)"));
    if let Value::Object(fields) = fields {
        set.extend(fields);
    }
    set.insert("version".into(), json!(version));
    json!({
        "query": format!("{{\n  run as var(func: eq(xid, {})) @filter(lt(version, {version}))\n}}", quoted(run)),
        "mutations": [{
            "cond": "@if(eq(len(run), 1))",
            "set": [Value::Object(set)],
        }],
    })
}

/// The `/query` body for a page of the runs reaching `target` through a step's
/// `predicate`: the steps and then their runs are collected into variables, so the page
/// is ordered, filtered by the cursor and cut by Dgraph over all runs at once.
pub fn runs_query(predicate: &str, target: &str, page: RunPage) -> Value {
    let (order, after) = if page.newest_first {
        ("orderdesc", "lt")
    } else {
        ("orderasc", "gt")
    };
    let (declared, filter) = match page.after {
        Some(_) => (
            ", $after: string",
            format!(" @filter({after}(xid, $after))"),
        ),
        None => ("", String::new()),
    };
    let mut variables = serde_json::Map::new();
    variables.insert("$xid".into(), json!(target));
    if let Some(run) = page.after {
        variables.insert("$after".into(), json!(xid::run(run)));
    }
    json!({
        "query": format!(
            "query runs($xid: string{declared}) {{\n  var(func: eq(xid, $xid)) {{\n    steps as ~{predicate}\n  }}\n  \
             var(func: uid(steps)) {{\n    runs as ~has_step\n  }}\n  \
             q(func: uid(runs), {order}: xid, first: {}){filter} {{\n    xid\n    name\n  }}\n}}",
            page.limit
        ),
        "variables": variables,
    })
}

/// The `/query` body walking `depends_on` (or its reverse) from a step, `depth` hops.
pub fn walk_query(step_xid: &str, depth: u32, forwards: bool) -> Value {
    let edge = if forwards {
        "depends_on"
    } else {
        "~depends_on"
    };
    json!({
        "query": format!(
            "query walk($xid: string) {{\n  q(func: eq(xid, $xid)) @recurse(depth: {}, loop: false) {{\n    xid\n    {edge}\n  }}\n}}",
            depth + 1
        ),
        "variables": { "$xid": step_xid },
    })
}

/// The `/query` body for the tools and models of some steps and the principal of a run.
pub fn usage_query(step_xids: &[String], run_xid: &str) -> Value {
    let list = serde_json::to_string(step_xids).expect("strings serialize");
    json!({
        "query": format!(
            "query usage($run: string) {{\n  steps(func: eq(xid, {list})) {{\n    calls_tool {{ name }}\n    uses_model {{ name }}\n  }}\n  run(func: eq(xid, $run)) {{\n    submitted_by {{ name }}\n  }}\n}}"
        ),
        "variables": { "$run": run_xid },
    })
}

/// Steps reached in a `@recurse` answer, each at its shortest hop count.
fn reached(root: &Value, edge: &str, prefix: &str) -> Vec<StepRef> {
    let start = root.get("xid").and_then(Value::as_str).unwrap_or_default();
    let mut best: BTreeMap<String, u32> = BTreeMap::new();
    let mut queue: VecDeque<(&Value, u32)> = VecDeque::from([(root, 0)]);
    while let Some((node, depth)) = queue.pop_front() {
        for next in node
            .get(edge)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(xid) = next
                .get("xid")
                .and_then(Value::as_str)
                .filter(|x| *x != start)
            {
                let step = xid.strip_prefix(prefix).unwrap_or(xid).to_owned();
                let entry = best.entry(step).or_insert(depth + 1);
                *entry = (*entry).min(depth + 1);
            }
            queue.push_back((next, depth + 1));
        }
    }
    let mut steps: Vec<StepRef> = best
        .into_iter()
        .map(|(step, depth)| StepRef { depth, step })
        .collect();
    steps.sort();
    steps
}

/// A Dgraph alpha's HTTP API.
#[derive(Debug, Clone)]
pub struct DgraphGraph {
    http: reqwest::Client,
    base: String,
}

impl DgraphGraph {
    /// A store talking to the Dgraph alpha at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    async fn post(&self, path: &str, body: reqwest::RequestBuilder) -> Result<Value> {
        let answer: Value = body.send().await?.error_for_status()?.json().await?;
        match answer.get("errors").and_then(Value::as_array) {
            Some(errors) if !errors.is_empty() => Err(Error::Dgraph(format!(
                "{path}: {}",
                Value::Array(errors.clone())
            ))),
            _ => Ok(answer),
        }
    }

    async fn query(&self, body: Value) -> Result<Value> {
        let request = self.http.post(format!("{}/query", self.base)).json(&body);
        Ok(self.post("/query", request).await?["data"].take())
    }

    async fn walk_edges(
        &self,
        run: Uuid,
        step: &str,
        depth: u32,
        forwards: bool,
    ) -> Result<Vec<StepRef>> {
        let data = self
            .query(walk_query(&xid::step(run, step), depth, forwards))
            .await?;
        let edge = if forwards {
            "depends_on"
        } else {
            "~depends_on"
        };
        let prefix = xid::step(run, "");
        Ok(data["q"]
            .as_array()
            .and_then(|roots| roots.first())
            .map(|root| reached(root, edge, &prefix))
            .unwrap_or_default())
    }

    async fn runs(&self, predicate: &str, target: &str, page: RunPage) -> Result<Vec<RunRef>> {
        let data = self.query(runs_query(predicate, target, page)).await?;
        Ok(runs_of(&data))
    }
}

/// The runs of a [`runs_query`] answer, in its order.
fn runs_of(data: &Value) -> Vec<RunRef> {
    data["q"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|run| {
            Some(RunRef {
                run: Uuid::parse_str(run["xid"].as_str()?.strip_prefix("run:")?).ok()?,
                name: run["name"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

impl GraphStore for DgraphGraph {
    async fn ensure_schema(&self) -> Result<()> {
        let request = self.http.post(format!("{}/alter", self.base)).body(SCHEMA);
        self.post("/alter", request).await.map(drop)
    }

    async fn apply(&self, change: &GraphChange) -> Result<()> {
        let body = mutation(change);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self
                .http
                .post(format!("{}/mutate?commitNow=true", self.base))
                .json(&body);
            match self.post("/mutate", request).await {
                Err(Error::Dgraph(message))
                    if message.contains("aborted") && attempt < MUTATION_ATTEMPTS =>
                {
                    warn!(attempt, "dgraph aborted the transaction; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                other => return other.map(drop),
            }
        }
    }

    async fn runs_using_tool(
        &self,
        tenant: &str,
        tool: &str,
        page: RunPage,
    ) -> Result<Vec<RunRef>> {
        self.runs("calls_tool", &xid::tool(tenant, tool), page)
            .await
    }

    async fn runs_using_model(
        &self,
        tenant: &str,
        model: &str,
        page: RunPage,
    ) -> Result<Vec<RunRef>> {
        self.runs("uses_model", &xid::model(tenant, model), page)
            .await
    }

    async fn walk(
        &self,
        run: Uuid,
        step: &str,
        depth: u32,
        direction: Direction,
    ) -> Result<Vec<StepRef>> {
        self.walk_edges(run, step, depth, direction == Direction::Upstream)
            .await
    }

    async fn usage(&self, run: Uuid, steps: &[String]) -> Result<Usage> {
        let involved: Vec<String> = steps.iter().map(|s| xid::step(run, s)).collect();
        let data = self.query(usage_query(&involved, &xid::run(run))).await?;
        let names = |key: &str| -> Vec<String> {
            let set: BTreeSet<String> = data["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| match &s[key] {
                    Value::Array(items) => items.clone(),
                    Value::Null => Vec::new(),
                    single => vec![single.clone()],
                })
                .filter_map(|n| n["name"].as_str().map(str::to_owned))
                .collect();
            set.into_iter().collect()
        };
        let submitted_by = data["run"][0]["submitted_by"]
            .as_array()
            .and_then(|p| p.first())
            .or(Some(&data["run"][0]["submitted_by"]))
            .and_then(|p| p["name"].as_str())
            .map(str::to_owned);
        Ok(Usage {
            tools: names("calls_tool"),
            models: names("uses_model"),
            submitted_by,
        })
    }
}
