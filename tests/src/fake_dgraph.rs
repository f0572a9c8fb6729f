//! A fake Dgraph alpha over HTTP, answering `/alter`, `/mutate` and `/query` from an
//! in-memory graph well enough for the Dgraph adapter (`flowline_graph::DgraphGraph`), so
//! that the projectors and the query service can run on the adapter end to end where no
//! Dgraph can be installed.
//!
//! It understands the DQL the adapter sends and nothing more: upsert blocks whose query
//! binds variables with `eq(xid, …)`, `uid(…)`, `lt(version, …)`, `eq(…)` filters and
//! `has_step` children, conditional mutations (`@if(eq|gt(len(v), n) AND …)`) setting
//! predicates and uid edges; and the adapter's `walk`, `runs` and `usage` queries. Its
//! answers follow the shapes Dgraph documents (see
//! `graph/tests/fixtures/dgraph/SOURCES.md`): `{"data": {block: [...]}}`, `[uid]`
//! predicates as arrays, reverse edges under `~predicate`, and `@recurse` following each
//! edge once (a node reached again is a leaf).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::routing::post;
use serde_json::{Value, json};

/// One node: its scalar predicates and its outgoing uid edges.
#[derive(Debug, Default, Clone)]
struct Node {
    values: BTreeMap<String, Value>,
    edges: BTreeMap<String, Vec<usize>>,
}

/// The in-memory graph.
#[derive(Debug, Default)]
struct Graph {
    nodes: Vec<Node>,
}

impl Graph {
    fn by_xid(&self, xid: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.values.get("xid").and_then(Value::as_str) == Some(xid))
    }

    fn xid(&self, uid: usize) -> &str {
        self.nodes[uid]
            .values
            .get("xid")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The nodes `uid` reaches over `edge` (`~edge`: the nodes reaching it).
    fn neighbours(&self, uid: usize, edge: &str) -> Vec<usize> {
        match edge.strip_prefix('~') {
            Some(forward) => (0..self.nodes.len())
                .filter(|&from| {
                    self.nodes[from]
                        .edges
                        .get(forward)
                        .is_some_and(|to| to.contains(&uid))
                })
                .collect(),
            None => self.nodes[uid].edges.get(edge).cloned().unwrap_or_default(),
        }
    }
}

/// A running fake alpha.
pub struct FakeDgraph {
    /// Its base URL, for `DGRAPH_URL`.
    pub url: String,
    graph: Arc<Mutex<Graph>>,
}

impl FakeDgraph {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        let graph = Arc::new(Mutex::new(Graph::default()));
        let app = Router::new()
            .route("/alter", post(answer))
            .route("/mutate", post(answer))
            .route("/query", post(answer))
            .with_state(graph.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, graph }
    }

    /// How many nodes it holds.
    pub fn node_count(&self) -> usize {
        self.graph.lock().unwrap().nodes.len()
    }
}

async fn answer(
    State(graph): State<Arc<Mutex<Graph>>>,
    uri: OriginalUri,
    body: String,
) -> axum::Json<Value> {
    let mut graph = graph.lock().unwrap();
    let answer = match uri.path() {
        "/alter" => Ok(json!({"code": "Success", "message": "Done"})),
        "/mutate" => serde_json::from_str(&body)
            .map_err(|e| e.to_string())
            .and_then(|body: Value| mutate(&mut graph, &body)),
        _ => serde_json::from_str(&body)
            .map_err(|e| e.to_string())
            .and_then(|body: Value| query(&graph, &body)),
    };
    axum::Json(match answer {
        Ok(data) => json!({
            "data": data,
            "extensions": {
                "server_latency": {"parsing_ns": 1, "processing_ns": 1, "encoding_ns": 1},
                "txn": {"start_ts": 1}
            }
        }),
        Err(message) => json!({
            "errors": [{"message": message, "extensions": {"code": "ErrorInvalidRequest"}}],
            "data": null
        }),
    })
}

/// The text between `start` (after it) and the `)` closing the parenthesis `start` opens.
fn call_args<'a>(text: &'a str, start: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let mut depth = 1;
    for (i, c) in text[from..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[from..from + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The JSON literal (string, number, array, bool) at the start of `text`.
fn literal(text: &str) -> Option<Value> {
    serde_json::Deserializer::from_str(text.trim_start())
        .into_iter::<Value>()
        .next()?
        .ok()
}

/// Whether `node` passes a filter: `atom (OR atom)*`, each atom `NOT`-able, atoms being
/// `eq(predicate, literal)`, `lt(predicate, literal)` or `gt(…)`.
fn passes(node: &Node, filter: &str) -> bool {
    filter.split(" OR ").any(|atom| {
        let atom = atom.trim();
        match atom.strip_prefix("NOT ") {
            Some(negated) => !holds(node, negated),
            None => holds(node, atom),
        }
    })
}

fn holds(node: &Node, atom: &str) -> bool {
    let (function, rest) = atom.split_once('(').unwrap_or((atom, ""));
    let rest = rest.strip_suffix(')').unwrap_or(rest);
    let (predicate, value) = rest.split_once(',').unwrap_or((rest, ""));
    let Some(value) = literal(value) else {
        return false;
    };
    let Some(actual) = node.values.get(predicate.trim()) else {
        return false;
    };
    match (function.trim(), &value) {
        ("eq", Value::Array(any)) => any.contains(actual),
        ("eq", _) => actual == &value,
        ("lt", _) => actual.as_f64() < value.as_f64(),
        ("gt", _) => actual.as_f64() > value.as_f64(),
        _ => false,
    }
}

/// Binds the variables of an upsert block's query.
fn bind(graph: &Graph, query: &str) -> HashMap<String, Vec<usize>> {
    let mut vars: HashMap<String, Vec<usize>> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    for line in query.lines().map(str::trim) {
        let Some((name, rest)) = line.split_once(" as ") else {
            continue;
        };
        let filter = call_args(rest, "@filter(");
        let found: Vec<usize> = if rest.starts_with("var(") {
            let roots: Vec<usize> = if let Some(xid) = call_args(rest, "eq(xid,") {
                literal(xid)
                    .and_then(|xid| graph.by_xid(xid.as_str()?))
                    .into_iter()
                    .collect()
            } else if let Some(of) = call_args(rest, "uid(") {
                vars.get(of.trim()).cloned().unwrap_or_default()
            } else {
                Vec::new()
            };
            let kept: Vec<usize> = roots
                .into_iter()
                .filter(|&uid| filter.is_none_or(|f| passes(&graph.nodes[uid], f)))
                .collect();
            parent.clone_from(&kept);
            kept
        } else {
            // A child block: an edge of the nodes bound on the line opening it.
            let edge = rest.split_whitespace().next().unwrap_or_default();
            parent
                .iter()
                .flat_map(|&uid| graph.neighbours(uid, edge))
                .filter(|&uid| filter.is_none_or(|f| passes(&graph.nodes[uid], f)))
                .collect()
        };
        vars.insert(name.trim().to_owned(), found);
    }
    vars
}

/// Whether a mutation's `@if(…)` holds for the bound variables.
fn condition(cond: &str, vars: &HashMap<String, Vec<usize>>) -> bool {
    let inner = call_args(cond, "@if(").unwrap_or_default();
    inner.split(" AND ").all(|test| {
        let test = test.trim();
        let var = call_args(test, "len(").unwrap_or_default().trim();
        let count = vars.get(var).map_or(0, Vec::len) as u64;
        let wanted = test
            .rsplit(',')
            .next()
            .and_then(|n| n.trim().trim_end_matches(')').parse::<u64>().ok())
            .unwrap_or(0);
        if test.starts_with("gt(") {
            count > wanted
        } else {
            count == wanted
        }
    })
}

/// The nodes `uid(var)` names, creating one for a variable that matched nothing.
fn resolve(graph: &mut Graph, vars: &mut HashMap<String, Vec<usize>>, uid: &str) -> Vec<usize> {
    let var = call_args(uid, "uid(").unwrap_or(uid).trim().to_owned();
    let bound = vars.entry(var).or_default();
    if bound.is_empty() {
        graph.nodes.push(Node::default());
        bound.push(graph.nodes.len() - 1);
    }
    bound.clone()
}

fn set(graph: &mut Graph, vars: &mut HashMap<String, Vec<usize>>, object: &Value) {
    let Some(uid) = object.get("uid").and_then(Value::as_str) else {
        return;
    };
    for node in resolve(graph, vars, uid) {
        for (predicate, value) in object.as_object().into_iter().flatten() {
            let targets: Vec<&Value> = match value {
                Value::Object(_) => vec![value],
                Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
                    items.iter().collect()
                }
                _ => Vec::new(),
            };
            if predicate == "uid" {
                continue;
            }
            if targets.is_empty() {
                graph.nodes[node]
                    .values
                    .insert(predicate.clone(), value.clone());
                continue;
            }
            for target in targets {
                set(graph, vars, target);
                let uid = target
                    .get("uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                for to in resolve(graph, vars, uid) {
                    let edges = graph.nodes[node]
                        .edges
                        .entry(predicate.clone())
                        .or_default();
                    if !edges.contains(&to) {
                        edges.push(to);
                    }
                }
            }
        }
    }
}

fn mutate(graph: &mut Graph, body: &Value) -> Result<Value, String> {
    let mut vars = bind(graph, body["query"].as_str().unwrap_or_default());
    for mutation in body["mutations"].as_array().into_iter().flatten() {
        let applies = mutation["cond"]
            .as_str()
            .is_none_or(|cond| condition(cond, &vars));
        if applies {
            for object in mutation["set"].as_array().into_iter().flatten() {
                set(graph, &mut vars, object);
            }
        }
    }
    Ok(json!({"code": "Success", "message": "Done", "queries": null, "uids": {}}))
}

fn variable(body: &Value, name: &str) -> Option<String> {
    body["variables"][name].as_str().map(str::to_owned)
}

fn query(graph: &Graph, body: &Value) -> Result<Value, String> {
    let text = body["query"].as_str().unwrap_or_default();
    if text.starts_with("query walk(") {
        walk(graph, text, body)
    } else if text.starts_with("query runs(") {
        runs(graph, text, body)
    } else if text.starts_with("query usage(") {
        usage(graph, text, body)
    } else {
        Err(format!("the fake alpha does not know this query: {text}"))
    }
}

/// `@recurse(depth: d, loop: false)` from one root over one edge, level by level as
/// Dgraph does: each edge is followed once; a node reached again is a leaf.
fn walk(graph: &Graph, text: &str, body: &Value) -> Result<Value, String> {
    let depth: usize = call_args(text, "@recurse(depth:")
        .and_then(|args| args.split(',').next()?.trim().parse().ok())
        .ok_or("no depth")?;
    let edge = text
        .lines()
        .map(str::trim)
        .find(|line| line.ends_with("depends_on"))
        .ok_or("no edge")?;
    let Some(root) = variable(body, "$xid").and_then(|xid| graph.by_xid(&xid)) else {
        return Ok(json!({"q": []}));
    };
    // Tree nodes: (graph node, children); built breadth-first.
    let mut tree: Vec<(usize, Vec<usize>)> = vec![(root, Vec::new())];
    let mut followed: HashSet<(usize, usize)> = HashSet::new();
    let mut level = vec![0];
    for _ in 1..depth {
        let mut next = Vec::new();
        for &at in &level {
            let from = tree[at].0;
            for to in graph.neighbours(from, edge) {
                if followed.insert((from, to)) {
                    tree.push((to, Vec::new()));
                    let child = tree.len() - 1;
                    tree[at].1.push(child);
                    next.push(child);
                }
            }
        }
        level = next;
    }
    fn render(graph: &Graph, tree: &[(usize, Vec<usize>)], at: usize, edge: &str) -> Value {
        let mut object = serde_json::Map::new();
        object.insert("xid".into(), json!(graph.xid(tree[at].0)));
        if !tree[at].1.is_empty() {
            let children = tree[at]
                .1
                .iter()
                .map(|&child| render(graph, tree, child, edge))
                .collect();
            object.insert(edge.to_owned(), Value::Array(children));
        }
        Value::Object(object)
    }
    Ok(json!({"q": [render(graph, &tree, 0, edge)]}))
}

/// The adapter's page of runs reaching a target through a step's predicate.
fn runs(graph: &Graph, text: &str, body: &Value) -> Result<Value, String> {
    let predicate = text
        .split("steps as ~")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("no predicate")?;
    let first: usize = text
        .split("first: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next()?.trim().parse().ok())
        .ok_or("no first")?;
    let newest_first = text.contains("orderdesc: xid");
    let after = variable(body, "$after");
    let Some(target) = variable(body, "$xid").and_then(|xid| graph.by_xid(&xid)) else {
        return Ok(json!({"q": []}));
    };
    let steps = graph.neighbours(target, &format!("~{predicate}"));
    let found: BTreeSet<&str> = steps
        .iter()
        .flat_map(|&step| graph.neighbours(step, "~has_step"))
        .map(|run| graph.xid(run))
        .filter(|xid| match &after {
            Some(after) if newest_first => *xid < after.as_str(),
            Some(after) => *xid > after.as_str(),
            None => true,
        })
        .collect();
    let ordered: Vec<&str> = if newest_first {
        found.into_iter().rev().collect()
    } else {
        found.into_iter().collect()
    };
    let page: Vec<Value> = ordered
        .into_iter()
        .take(first)
        .map(|xid| {
            let run = graph.by_xid(xid).expect("found");
            json!({"xid": xid, "name": graph.nodes[run].values.get("name")})
        })
        .collect();
    Ok(json!({"q": page}))
}

/// The tools and models of some steps, and the run's principal.
fn usage(graph: &Graph, text: &str, body: &Value) -> Result<Value, String> {
    let list = call_args(text, "steps(func: eq(xid,")
        .and_then(literal)
        .ok_or("no step list")?;
    let names = |uid: usize, edge: &str| -> Vec<Value> {
        graph
            .neighbours(uid, edge)
            .into_iter()
            .map(|to| json!({"name": graph.nodes[to].values.get("name")}))
            .collect()
    };
    let steps: Vec<Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|xid| graph.by_xid(xid.as_str()?))
        .filter_map(|step| {
            let mut object = serde_json::Map::new();
            for edge in ["calls_tool", "uses_model"] {
                let found = names(step, edge);
                if !found.is_empty() {
                    object.insert(edge.into(), Value::Array(found));
                }
            }
            // Dgraph leaves out a node none of whose asked predicates it has.
            (!object.is_empty()).then_some(Value::Object(object))
        })
        .collect();
    let run: Vec<Value> = variable(body, "$run")
        .and_then(|xid| graph.by_xid(&xid))
        .map(|run| names(run, "submitted_by"))
        .filter(|principals| !principals.is_empty())
        .map(|principals| json!({"submitted_by": principals}))
        .into_iter()
        .collect();
    Ok(json!({"steps": steps, "run": run}))
}
