-- The PostgreSQL graph view: nodes keyed by external id, edges by (from, predicate, to).
CREATE TABLE graph_nodes (
    xid      text    PRIMARY KEY,
    tenant   text    NOT NULL,
    kind     text    NOT NULL,
    name     text,
    status   text,
    version  bigint  NOT NULL DEFAULT 0
);

CREATE TABLE graph_edges (
    tenant     text NOT NULL,
    from_xid   text NOT NULL,
    predicate  text NOT NULL,
    to_xid     text NOT NULL,
    PRIMARY KEY (from_xid, predicate, to_xid)
);

CREATE INDEX graph_edges_reverse ON graph_edges (to_xid, predicate);
