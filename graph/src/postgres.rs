//! The default graph store: node and edge tables in PostgreSQL, recursive CTEs with depth
//! bounds and cycle safety.

use sqlx::PgPool;
use uuid::Uuid;

use crate::change::{GraphChange, RunChange, xid};
use crate::{GraphStore, Lineage, Result, RunRef, StepRef};

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
    async fn walk(
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
        let run = xid::run(change.run);
        let version = change.version as i64;
        let mut transaction = self.pool.begin().await?;
        match &change.change {
            RunChange::Submitted {
                name,
                steps,
                submitted_by,
            } => {
                let created = sqlx::query(
                    "INSERT INTO graph_nodes (xid, tenant, kind, name, status, version) \
                     VALUES ($1, $2, 'run', $3, 'pending', $4) \
                     ON CONFLICT (xid) DO NOTHING",
                )
                .bind(&run)
                .bind(&change.tenant)
                .bind(name)
                .bind(version)
                .execute(&mut *transaction)
                .await?
                .rows_affected()
                    == 1;
                if !created {
                    return Ok(()); // replayed: everything below was written with it
                }
                let mut nodes: Vec<(String, &str, Option<String>)> = Vec::new();
                let mut edges: Vec<(String, &str, String)> = Vec::new();
                for step in steps {
                    let step_xid = xid::step(change.run, &step.id);
                    nodes.push((step_xid.clone(), "step", Some(step.id.clone())));
                    edges.push((run.clone(), "has_step", step_xid.clone()));
                    for dependency in &step.depends_on {
                        edges.push((
                            step_xid.clone(),
                            "depends_on",
                            xid::step(change.run, dependency),
                        ));
                    }
                    if let Some(tool) = &step.tool {
                        nodes.push((xid::tool(&change.tenant, tool), "tool", Some(tool.clone())));
                        edges.push((
                            step_xid.clone(),
                            "calls_tool",
                            xid::tool(&change.tenant, tool),
                        ));
                    }
                    if let Some(model) = &step.model {
                        nodes.push((
                            xid::model(&change.tenant, model),
                            "model",
                            Some(model.clone()),
                        ));
                        edges.push((
                            step_xid.clone(),
                            "uses_model",
                            xid::model(&change.tenant, model),
                        ));
                    }
                }
                if let Some(principal) = submitted_by {
                    let node = xid::principal(&change.tenant, principal);
                    nodes.push((node.clone(), "principal", Some(principal.clone())));
                    edges.push((run.clone(), "submitted_by", node));
                }
                let (ids, kinds, names): (Vec<_>, Vec<_>, Vec<_>) = nodes.into_iter().fold(
                    (Vec::new(), Vec::new(), Vec::new()),
                    |(mut ids, mut kinds, mut names), (id, kind, name)| {
                        ids.push(id);
                        kinds.push(kind);
                        names.push(name);
                        (ids, kinds, names)
                    },
                );
                sqlx::query(
                    "INSERT INTO graph_nodes (xid, tenant, kind, name) \
                     SELECT n.xid, $1, n.kind, n.name FROM unnest($2::text[], $3::text[], $4::text[]) AS n(xid, kind, name) \
                     ON CONFLICT (xid) DO NOTHING",
                )
                .bind(&change.tenant)
                .bind(&ids)
                .bind(&kinds)
                .bind(&names)
                .execute(&mut *transaction)
                .await?;
                let froms: Vec<&str> = edges.iter().map(|e| e.0.as_str()).collect();
                let predicates: Vec<&str> = edges.iter().map(|e| e.1).collect();
                let tos: Vec<&str> = edges.iter().map(|e| e.2.as_str()).collect();
                sqlx::query(
                    "INSERT INTO graph_edges (tenant, from_xid, predicate, to_xid) \
                     SELECT $1, e.f, e.p, e.t FROM unnest($2::text[], $3::text[], $4::text[]) AS e(f, p, t) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&change.tenant)
                .bind(&froms)
                .bind(&predicates)
                .bind(&tos)
                .execute(&mut *transaction)
                .await?;
            }
            RunChange::Status(status) => {
                sqlx::query("UPDATE graph_nodes SET status = $2, version = $3 WHERE xid = $1 AND version < $3")
                    .bind(&run)
                    .bind(status)
                    .bind(version)
                    .execute(&mut *transaction)
                    .await?;
            }
            RunChange::Touched => {
                sqlx::query("UPDATE graph_nodes SET version = $2 WHERE xid = $1 AND version < $2")
                    .bind(&run)
                    .bind(version)
                    .execute(&mut *transaction)
                    .await?;
            }
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

    async fn dependencies(&self, run: Uuid, step: &str, depth: u32) -> Result<Vec<StepRef>> {
        self.walk(run, step, depth, true).await
    }

    async fn dependents(&self, run: Uuid, step: &str, depth: u32) -> Result<Vec<StepRef>> {
        self.walk(run, step, depth, false).await
    }

    async fn lineage(&self, run: Uuid, step: &str, depth: u32) -> Result<Lineage> {
        let steps = self.dependencies(run, step, depth).await?;
        let mut involved: Vec<String> = steps.iter().map(|s| xid::step(run, &s.step)).collect();
        involved.push(xid::step(run, step));
        let used: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT e.predicate, n.name FROM graph_edges e JOIN graph_nodes n ON n.xid = e.to_xid \
             WHERE e.from_xid = ANY($1) AND e.predicate IN ('calls_tool', 'uses_model') \
             ORDER BY n.name",
        )
        .bind(&involved)
        .fetch_all(&self.pool)
        .await?;
        let mut lineage = Lineage {
            steps,
            ..Lineage::default()
        };
        for (predicate, name) in used {
            let name = name.unwrap_or_default();
            let list = if predicate == "calls_tool" {
                &mut lineage.tools
            } else {
                &mut lineage.models
            };
            if !list.contains(&name) {
                list.push(name);
            }
        }
        lineage.submitted_by = sqlx::query_scalar(
            "SELECT n.name FROM graph_edges e JOIN graph_nodes n ON n.xid = e.to_xid \
             WHERE e.from_xid = $1 AND e.predicate = 'submitted_by'",
        )
        .bind(xid::run(run))
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        Ok(lineage)
    }
}
