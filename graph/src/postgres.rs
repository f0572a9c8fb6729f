//! The default graph store: node and edge tables in PostgreSQL, recursive CTEs with depth
//! bounds and cycle safety.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use flowline_pg_copy::CopyRows;
use sqlx::PgPool;
use uuid::Uuid;

use crate::change::{GraphChange, RunChange, StepNode, finished_step_statuses, xid};
use crate::{Direction, GraphStore, Result, RunPage, RunRef, StepRef, Usage};

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
        page: RunPage,
    ) -> Result<Vec<RunRef>> {
        let (after, order) = if page.newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let sql = format!(
            "SELECT run.xid, run.name FROM graph_nodes run WHERE run.xid IN ( \
               SELECT has.from_xid FROM graph_edges used \
               JOIN graph_edges has ON has.to_xid = used.from_xid AND has.predicate = 'has_step' \
               WHERE used.tenant = $1 AND used.predicate = $2 AND used.to_xid = $3) \
             AND ($4::text IS NULL OR run.xid {after} $4) ORDER BY run.xid {order} LIMIT $5"
        );
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(predicate)
            .bind(target)
            .bind(page.after.map(xid::run))
            .bind(i64::from(page.limit))
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
    ///
    /// A breadth-first walk that visits each step once: every row of the recursion is a
    /// whole frontier with the steps seen so far, so its work grows with the edges, not
    /// with the paths (a ladder where each step depends on the two before it has
    /// exponentially many).
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
            "WITH RECURSIVE walk(frontier, seen, depth) AS ( \
               SELECT ARRAY[$1::text], ARRAY[$1::text], 0 \
               UNION ALL \
               SELECT next.steps, w.seen || next.steps, w.depth + 1 FROM walk w \
               CROSS JOIN LATERAL ( \
                 SELECT array_agg(DISTINCT e.{to}) AS steps FROM graph_edges e \
                 WHERE e.{from} = ANY(w.frontier) AND e.predicate = 'depends_on' \
                   AND NOT e.{to} = ANY(w.seen) \
               ) next \
               WHERE w.depth < $2 AND cardinality(next.steps) > 0 \
             ) SELECT reached, depth FROM walk, unnest(frontier) AS reached \
             WHERE depth > 0 ORDER BY depth, reached"
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

    /// One transaction and a few set-based statements per batch. The batch's runs are
    /// read (and locked) first, with the statuses of their steps when the batch changes
    /// steps; every change is then folded in memory, in order, skipping those at or below
    /// the run's version (replays and duplicates), the way the aggregate applies events.
    /// New runs are inserted with their final status, then their step nodes and edges;
    /// runs that existed before the batch and their changed steps are updated once each.
    async fn apply_all(&self, changes: &[GraphChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool.begin().await?;
        let mut run_xids: Vec<String> = changes.iter().map(|c| xid::run(c.run)).collect();
        run_xids.sort_unstable();
        run_xids.dedup();
        let stored: HashMap<String, (i64, bool)> = sqlx::query_as::<_, (String, i64, bool)>(
            "SELECT xid, version, started FROM graph_nodes WHERE xid = ANY($1) FOR UPDATE",
        )
        .bind(&run_xids)
        .fetch_all(&mut *transaction)
        .await?
        .into_iter()
        .map(|(xid, version, started)| (xid, (version, started)))
        .collect();
        let mut stored_steps = read_step_statuses(&mut transaction, changes, &stored).await?;

        let mut folds: BTreeMap<Uuid, RunFold<'_>> = BTreeMap::new();
        for change in changes {
            let fold = folds.entry(change.run).or_insert_with(|| {
                let run = xid::run(change.run);
                match stored.get(&run) {
                    Some((version, started)) => RunFold {
                        tenant: &change.tenant,
                        stored_version: Some(*version),
                        version: *version,
                        status: None,
                        started: *started,
                        steps: stored_steps.remove(&run).unwrap_or_default(),
                        changed_steps: BTreeSet::new(),
                        submitted: None,
                    },
                    None => RunFold {
                        tenant: &change.tenant,
                        stored_version: None,
                        version: 0,
                        status: None,
                        started: false,
                        steps: BTreeMap::new(),
                        changed_steps: BTreeSet::new(),
                        submitted: None,
                    },
                }
            });
            fold.apply(change);
        }

        let (new, known): (Vec<_>, Vec<_>) = folds
            .iter()
            .partition(|(_, fold)| fold.stored_version.is_none());
        let new: Vec<(&Uuid, &RunFold<'_>)> = new
            .into_iter()
            .filter(|(_, fold)| fold.submitted.is_some())
            .collect();
        if !new.is_empty() {
            insert_runs(&mut transaction, &new).await?;
        }
        update_runs(&mut transaction, &known).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn runs_using_tool(
        &self,
        tenant: &str,
        tool: &str,
        page: RunPage,
    ) -> Result<Vec<RunRef>> {
        self.runs_reaching(tenant, "calls_tool", &xid::tool(tenant, tool), page)
            .await
    }

    async fn runs_using_model(
        &self,
        tenant: &str,
        model: &str,
        page: RunPage,
    ) -> Result<Vec<RunRef>> {
        self.runs_reaching(tenant, "uses_model", &xid::model(tenant, model), page)
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

/// A run as the batch leaves it.
struct RunFold<'a> {
    tenant: &'a str,
    /// The version stored before the batch; `None` for a run not stored yet.
    stored_version: Option<i64>,
    /// The newest version applied.
    version: i64,
    /// The status the batch leaves (`None`: as stored).
    status: Option<String>,
    /// Whether the executor took the run up.
    started: bool,
    /// Every step's status, by step id: a new run's, or a stored run's when the batch
    /// changes its steps.
    steps: BTreeMap<String, String>,
    /// The steps the batch changed.
    changed_steps: BTreeSet<String>,
    /// The submission of a run new in this batch: name, steps, principal.
    submitted: Option<(&'a str, &'a [StepNode], Option<&'a str>)>,
}

/// Statuses the fold writes by itself.
const PENDING: &str = "pending";
const RUNNING: &str = "running";
const CANCELLED: &str = "cancelled";

impl<'a> RunFold<'a> {
    /// Applies one change if it is newer than what the run has, as the aggregate applies
    /// the event it comes from.
    fn apply(&mut self, change: &'a GraphChange) {
        let version = change.version as i64;
        if version <= self.version {
            return;
        }
        match &change.change {
            RunChange::Submitted {
                name,
                steps,
                submitted_by,
            } => {
                // A stored run already has its nodes; only a first submission adds them.
                if self.stored_version.is_some() || self.submitted.is_some() {
                    return;
                }
                self.submitted = Some((name, steps, submitted_by.as_deref()));
                self.status = Some(PENDING.into());
                self.steps = steps
                    .iter()
                    .map(|s| (s.id.clone(), PENDING.to_owned()))
                    .collect();
            }
            RunChange::Status(status) => self.status = Some(status.clone()),
            RunChange::Started => {
                self.status = Some(RUNNING.into());
                self.started = true;
            }
            RunChange::Stopped(status) => {
                self.status = Some(status.clone());
                let finished = finished_step_statuses();
                for (step, step_status) in &mut self.steps {
                    if !finished.contains(&step_status.as_str()) {
                        CANCELLED.clone_into(step_status);
                        self.changed_steps.insert(step.clone());
                    }
                }
            }
            RunChange::StepStatus { step, status } => {
                // A step the run does not have changes nothing (as in the aggregate).
                if let Some(step_status) = self.steps.get_mut(step) {
                    step_status.clone_from(status);
                    self.changed_steps.insert(step.clone());
                }
            }
            RunChange::StepRetried { step } => {
                self.status = Some(RUNNING.into());
                for (id, step_status) in &mut self.steps {
                    // The retried step and whatever the run's failure stopped go again.
                    if id == step || step_status == CANCELLED {
                        PENDING.clone_into(step_status);
                        self.changed_steps.insert(id.clone());
                    }
                }
            }
            RunChange::Resumed => {
                self.status = Some(if self.started { RUNNING } else { PENDING }.into());
            }
            RunChange::Touched => {}
        }
        self.version = version;
    }
}

/// Whether a change needs the statuses of its run's steps to be folded.
fn changes_steps(change: &RunChange) -> bool {
    matches!(
        change,
        RunChange::Stopped(_) | RunChange::StepStatus { .. } | RunChange::StepRetried { .. }
    )
}

/// The step statuses of the stored runs whose steps the batch changes, by run xid: one
/// statement. Steps written before statuses were kept read as `pending`.
async fn read_step_statuses(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    changes: &[GraphChange],
    stored: &HashMap<String, (i64, bool)>,
) -> Result<HashMap<String, BTreeMap<String, String>>> {
    let mut wanted: Vec<String> = changes
        .iter()
        .filter(|change| changes_steps(&change.change))
        .map(|change| xid::run(change.run))
        .filter(|run| stored.contains_key(run))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut statuses: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    if wanted.is_empty() {
        return Ok(statuses);
    }
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT e.from_xid, n.name, n.status FROM graph_edges e \
         JOIN graph_nodes n ON n.xid = e.to_xid \
         WHERE e.from_xid = ANY($1) AND e.predicate = 'has_step'",
    )
    .bind(&wanted)
    .fetch_all(&mut **transaction)
    .await?;
    for (run, step, status) in rows {
        statuses.entry(run).or_default().insert(
            step.unwrap_or_default(),
            status.unwrap_or_else(|| PENDING.into()),
        );
    }
    Ok(statuses)
}

/// Inserts the runs new in this batch with their final status and version, then (for
/// those that were indeed new) their step nodes, the tools, models and principals they
/// use, and their edges.
async fn insert_runs(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: &[(&Uuid, &RunFold<'_>)],
) -> Result<()> {
    let created: HashSet<String> = sqlx::query_scalar(
        "INSERT INTO graph_nodes (xid, tenant, kind, name, status, version, started) \
         SELECT r.xid, r.tenant, 'run', r.name, r.status, r.version, r.started \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bool[]) \
              AS r(xid, tenant, name, status, version, started) \
         ON CONFLICT (xid) DO NOTHING RETURNING xid",
    )
    .bind(
        new.iter()
            .map(|(run, _)| xid::run(**run))
            .collect::<Vec<_>>(),
    )
    .bind(new.iter().map(|(_, f)| f.tenant).collect::<Vec<_>>())
    .bind(
        new.iter()
            .map(|(_, f)| f.submitted.map_or("", |(name, ..)| name))
            .collect::<Vec<_>>(),
    )
    .bind(
        new.iter()
            .map(|(_, f)| f.status.as_deref().unwrap_or(PENDING))
            .collect::<Vec<_>>(),
    )
    .bind(new.iter().map(|(_, f)| f.version).collect::<Vec<_>>())
    .bind(new.iter().map(|(_, f)| f.started).collect::<Vec<_>>())
    .fetch_all(&mut **transaction)
    .await?
    .into_iter()
    .collect();
    // Steps and edges belong to one run and are written only with their run's node, so
    // they are new: COPY. Tools, models and principals are shared across runs.
    let mut steps = CopyRows::new();
    let mut shared: Vec<(String, &str, &str, &str)> = Vec::new();
    let mut edges: Vec<(&str, String, &str, String)> = Vec::new();
    for (run_id, fold) in new {
        let run = xid::run(**run_id);
        let Some((_, run_steps, submitted_by)) = fold.submitted else {
            continue;
        };
        if !created.contains(&run) {
            continue;
        }
        let tenant = fold.tenant;
        for step in run_steps {
            let step_xid = xid::step(**run_id, &step.id);
            steps
                .field(&step_xid)
                .field(tenant)
                .field("step")
                .field(step.id.as_str())
                .field(fold.steps.get(&step.id).map_or(PENDING, String::as_str))
                .field(0_i64)
                .end_row();
            edges.push((tenant, run.clone(), "has_step", step_xid.clone()));
            for dependency in &step.depends_on {
                edges.push((
                    tenant,
                    step_xid.clone(),
                    "depends_on",
                    xid::step(**run_id, dependency),
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
            transaction,
            "graph_nodes",
            &["xid", "tenant", "kind", "name", "status", "version"],
        )
        .await?;
    // One row per node, or the insert would touch a row twice. A principal node named by
    // a data key (ADR 26) is met with a different ciphertext of the same name on every run:
    // the smallest one is kept, here and against the table, so the node reads the same
    // whatever order runs were applied in (a rebuild equals the live view).
    shared.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.3.cmp(b.3)));
    shared.dedup_by(|a, b| a.0 == b.0);
    if !shared.is_empty() {
        sqlx::query(
            "INSERT INTO graph_nodes (xid, tenant, kind, name) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
             ON CONFLICT (xid) DO UPDATE SET name = EXCLUDED.name \
             WHERE EXCLUDED.name < graph_nodes.name",
        )
        .bind(shared.iter().map(|n| n.0.as_str()).collect::<Vec<_>>())
        .bind(shared.iter().map(|n| n.1).collect::<Vec<_>>())
        .bind(shared.iter().map(|n| n.2).collect::<Vec<_>>())
        .bind(shared.iter().map(|n| n.3).collect::<Vec<_>>())
        .execute(&mut **transaction)
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
            transaction,
            "graph_edges",
            &["tenant", "from_xid", "predicate", "to_xid"],
        )
        .await?;
    Ok(())
}

/// Runs stored before the batch: their newest version, status and start (one statement),
/// then their changed steps' statuses (one more).
async fn update_runs(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    known: &[(&Uuid, &RunFold<'_>)],
) -> Result<()> {
    let advanced: Vec<&(&Uuid, &RunFold<'_>)> = known
        .iter()
        .filter(|(_, fold)| Some(fold.version) > fold.stored_version)
        .collect();
    if advanced.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE graph_nodes n SET version = c.version, status = COALESCE(c.status, n.status), \
         started = c.started \
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bool[]) \
              AS c(xid, version, status, started) \
         WHERE n.xid = c.xid AND n.version < c.version",
    )
    .bind(
        advanced
            .iter()
            .map(|(run, _)| xid::run(**run))
            .collect::<Vec<_>>(),
    )
    .bind(advanced.iter().map(|(_, f)| f.version).collect::<Vec<_>>())
    .bind(
        advanced
            .iter()
            .map(|(_, f)| f.status.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(advanced.iter().map(|(_, f)| f.started).collect::<Vec<_>>())
    .execute(&mut **transaction)
    .await?;
    let steps: Vec<(String, &str)> = advanced
        .iter()
        .flat_map(|(run, fold)| {
            fold.changed_steps
                .iter()
                .map(|step| (xid::step(**run, step), fold.steps[step].as_str()))
        })
        .collect();
    if !steps.is_empty() {
        sqlx::query(
            "UPDATE graph_nodes n SET status = c.status \
             FROM unnest($1::text[], $2::text[]) AS c(xid, status) WHERE n.xid = c.xid",
        )
        .bind(
            steps
                .iter()
                .map(|(xid, _)| xid.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|(_, status)| *status).collect::<Vec<_>>())
        .execute(&mut **transaction)
        .await?;
    }
    Ok(())
}
