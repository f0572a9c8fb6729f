//! The default graph store: node and edge tables in PostgreSQL, recursive CTEs with depth
//! bounds and cycle safety.

use std::collections::{BTreeMap, HashSet};

use flowline_pg_copy::CopyRows;
use sqlx::PgPool;
use uuid::Uuid;

use crate::change::{GraphChange, RunChange, xid};
use crate::{Direction, GraphStore, Result, RunRef, StepRef, Usage};

/// The graph in PostgreSQL (tables from `migrations/`).
#[derive(Debug, Clone)]
pub struct PostgresGraph {
    pool: PgPool,
}

impl PostgresGraph {
    /// A graph store on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn runs_reaching(
        &self,
        tenant: &str,
        predicate: &str,
        target: &str,
    ) -> Result<Vec<RunRef>> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT DISTINCT run.xid, run.name FROM graph_edges used \
             JOIN graph_edges has ON has.to_xid = used.from_xid AND has.predicate = 'has_step' \
             JOIN graph_nodes run ON run.xid = has.from_xid \
             WHERE used.tenant = $1 AND used.predicate = $2 AND used.to_xid = $3 ORDER BY run.xid",
        )
        .bind(tenant)
        .bind(predicate)
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(xid, name)| {
                Some(RunRef {
                    run: Uuid::parse_str(xid.strip_prefix("run:")?).ok()?,
                    name: name.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Steps reachable from `step` along `depends_on`, forwards (its dependencies) or
    /// backwards (its dependents), each at its shortest distance.
    async fn walk_edges(
        &self,
        run: Uuid,
        step: &str,
        depth: u32,
        forwards: bool,
    ) -> Result<Vec<StepRef>> {
        let (from, to) = if forwards {
            ("from_xid", "to_xid")
        } else {
            ("to_xid", "from_xid")
        };
        let sql = format!(
            "WITH RECURSIVE reach(xid, depth, path) AS ( \
               SELECT e.{to}, 1, ARRAY[e.{from}, e.{to}] FROM graph_edges e \
               WHERE e.{from} = $1 AND e.predicate = 'depends_on' \
               UNION ALL \
               SELECT e.{to}, r.depth + 1, r.path || e.{to} FROM reach r \
               JOIN graph_edges e ON e.{from} = r.xid AND e.predicate = 'depends_on' \
               WHERE r.depth < $2 AND NOT e.{to} = ANY(r.path) \
             ) SELECT xid, min(depth) FROM reach GROUP BY xid ORDER BY min(depth), xid"
        );
        let prefix = xid::step(run, "");
        let rows: Vec<(String, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(xid::step(run, step))
            .bind(depth as i32)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(xid, depth)| StepRef {
                depth: depth as u32,
                step: xid.strip_prefix(&prefix).unwrap_or(&xid).to_owned(),
            })
            .collect())
    }
}

impl GraphStore for PostgresGraph {
    async fn ensure_schema(&self) -> Result<()> {
        // The tables come with the service's migrations; check they are there.
        sqlx::query("SELECT 1 FROM graph_nodes, graph_edges LIMIT 1")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn apply(&self, change: &GraphChange) -> Result<()> {
        self.apply_all(std::slice::from_ref(change)).await
    }

    /// One transaction and a few set-based statements per batch. The newest version and
    /// status of every run are folded in memory first; run nodes are inserted with them (a
    /// run that already exists was written with all its nodes and edges, so those are
    /// skipped), then the nodes and edges of the new runs; only runs that existed before
    /// the batch are updated, once each.
    async fn apply_all(&self, changes: &[GraphChange]) -> Result<()> {
        let mut latest: BTreeMap<Uuid, (i64, Option<&str>)> = BTreeMap::new();
        for change in changes {
            let status = match &change.change {
                RunChange::Status(status) => Some(status.as_str()),
                RunChange::Touched | RunChange::Submitted { .. } => None,
            };
            let entry = latest.entry(change.run).or_insert((0, None));
            if change.version as i64 > entry.0 {
                entry.0 = change.version as i64;
                entry.1 = status.or(entry.1);
            }
        }
        let mut created: HashSet<String> = HashSet::new();
        let mut transaction = self.pool.begin().await?;
        let submitted: Vec<(
            &GraphChange,
            &String,
            &Vec<crate::StepNode>,
            &Option<String>,
        )> = changes
            .iter()
            .filter_map(|change| match &change.change {
                RunChange::Submitted {
                    name,
                    steps,
                    submitted_by,
                } => Some((change, name, steps, submitted_by)),
                _ => None,
            })
            .collect();
        if !submitted.is_empty() {
            let folded = |run: &Uuid| latest.get(run).copied().unwrap_or((0, None));
            created = sqlx::query_scalar(
                "INSERT INTO graph_nodes (xid, tenant, kind, name, status, version) \
                 SELECT r.xid, r.tenant, 'run', r.name, r.status, r.version \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
                      AS r(xid, tenant, name, status, version) \
                 ON CONFLICT (xid) DO NOTHING RETURNING xid",
            )
            .bind(
                submitted
                    .iter()
                    .map(|(c, ..)| xid::run(c.run))
                    .collect::<Vec<_>>(),
            )
            .bind(
                submitted
                    .iter()
                    .map(|(c, ..)| c.tenant.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                submitted
                    .iter()
                    .map(|(_, name, ..)| name.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                submitted
                    .iter()
                    .map(|(c, ..)| folded(&c.run).1.unwrap_or("pending"))
                    .collect::<Vec<_>>(),
            )
            .bind(
                submitted
                    .iter()
                    .map(|(c, ..)| folded(&c.run).0)
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *transaction)
            .await?
            .into_iter()
            .collect();
            // Steps and edges belong to one run and are written only with their run's node,
            // so they are new: COPY. Tools, models and principals are shared across runs.
            let mut steps = CopyRows::new();
            let mut shared: Vec<(String, &str, &str, &str)> = Vec::new();
            let mut edges: Vec<(&str, String, &str, String)> = Vec::new();
            let mut written: HashSet<&str> = HashSet::new();
            for (change, _, run_steps, submitted_by) in &submitted {
                let run = xid::run(change.run);
                // A run that already existed was written with its run node; a second copy
                // of the submission in this batch (a stale relay's duplicate) adds nothing.
                match created.get(&run) {
                    Some(created_run) if written.insert(created_run.as_str()) => {}
                    _ => continue,
                }
                let tenant = change.tenant.as_str();
                for step in run_steps.iter() {
                    let step_xid = xid::step(change.run, &step.id);
                    steps
                        .field(&step_xid)
                        .field(tenant)
                        .field("step")
                        .field(step.id.as_str())
                        .field(0_i64)
                        .end_row();
                    edges.push((tenant, run.clone(), "has_step", step_xid.clone()));
                    for dependency in &step.depends_on {
                        edges.push((
                            tenant,
                            step_xid.clone(),
                            "depends_on",
                            xid::step(change.run, dependency),
                        ));
                    }
                    if let Some(tool) = &step.tool {
                        let node = xid::tool(tenant, tool);
                        shared.push((node.clone(), tenant, "tool", tool));
                        edges.push((tenant, step_xid.clone(), "calls_tool", node));
                    }
                    if let Some(model) = &step.model {
                        let node = xid::model(tenant, model);
                        shared.push((node.clone(), tenant, "model", model));
                        edges.push((tenant, step_xid.clone(), "uses_model", node));
                    }
                }
                if let Some(principal) = submitted_by {
                    let node = xid::principal(tenant, principal);
                    shared.push((node.clone(), tenant, "principal", principal));
                    edges.push((tenant, run.clone(), "submitted_by", node));
                }
            }
            steps
                .copy_into(
                    &mut transaction,
                    "graph_nodes",
                    &["xid", "tenant", "kind", "name", "version"],
                )
                .await?;
            // One row per node, or the insert would touch a row twice.
            shared.sort_by(|a, b| a.0.cmp(&b.0));
            shared.dedup_by(|a, b| a.0 == b.0);
            if !shared.is_empty() {
                sqlx::query(
                    "INSERT INTO graph_nodes (xid, tenant, kind, name) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT (xid) DO NOTHING",
                )
                .bind(shared.iter().map(|n| n.0.as_str()).collect::<Vec<_>>())
                .bind(shared.iter().map(|n| n.1).collect::<Vec<_>>())
                .bind(shared.iter().map(|n| n.2).collect::<Vec<_>>())
                .bind(shared.iter().map(|n| n.3).collect::<Vec<_>>())
                .execute(&mut *transaction)
                .await?;
            }
            // A step listing a dependency twice would repeat an edge.
            edges.sort_unstable_by(|a, b| (&a.1, a.2, &a.3).cmp(&(&b.1, b.2, &b.3)));
            edges.dedup_by(|a, b| (&a.1, a.2, &a.3) == (&b.1, b.2, &b.3));
            let mut edge_rows = CopyRows::new();
            for (tenant, from, predicate, to) in &edges {
                edge_rows
                    .field(*tenant)
                    .field(from)
                    .field(*predicate)
                    .field(to)
                    .end_row();
            }
            edge_rows
                .copy_into(
                    &mut transaction,
                    "graph_edges",
                    &["tenant", "from_xid", "predicate", "to_xid"],
                )
                .await?;
        }
        // Runs that existed before the batch: their newest version and status, if newer.
        let known: Vec<(String, i64, Option<&str>)> = latest
            .iter()
            .map(|(run, (version, status))| (xid::run(*run), *version, *status))
            .filter(|(run, ..)| !created.contains(run))
            .collect();
        if !known.is_empty() {
            sqlx::query(
                "UPDATE graph_nodes n SET version = c.version, status = COALESCE(c.status, n.status) \
                 FROM unnest($1::text[], $2::bigint[], $3::text[]) AS c(xid, version, status) \
                 WHERE n.xid = c.xid AND n.version < c.version",
            )
            .bind(known.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
            .bind(known.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(known.iter().map(|k| k.2).collect::<Vec<_>>())
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn runs_using_tool(&self, tenant: &str, tool: &str) -> Result<Vec<RunRef>> {
        self.runs_reaching(tenant, "calls_tool", &xid::tool(tenant, tool))
            .await
    }

    async fn runs_using_model(&self, tenant: &str, model: &str) -> Result<Vec<RunRef>> {
        self.runs_reaching(tenant, "uses_model", &xid::model(tenant, model))
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
        let used: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT DISTINCT e.predicate, n.name FROM graph_edges e JOIN graph_nodes n ON n.xid = e.to_xid \
             WHERE e.from_xid = ANY($1) AND e.predicate IN ('calls_tool', 'uses_model') \
             ORDER BY n.name",
        )
        .bind(&involved)
        .fetch_all(&self.pool)
        .await?;
        let mut usage = Usage::default();
        for (predicate, name) in used {
            let list = if predicate == "calls_tool" {
                &mut usage.tools
            } else {
                &mut usage.models
            };
            list.push(name.unwrap_or_default());
        }
        usage.submitted_by = sqlx::query_scalar(
            "SELECT n.name FROM graph_edges e JOIN graph_nodes n ON n.xid = e.to_xid \
             WHERE e.from_xid = $1 AND e.predicate = 'submitted_by'",
        )
        .bind(xid::run(run))
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        Ok(usage)
    }
}
