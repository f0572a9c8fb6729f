-- Which projector instance reads which partition. Instances heartbeat as members, take
-- an even share of the partitions as leases, renew them, and release what exceeds their
-- share; the leases of a dead instance expire and others claim them. (The broker's group
-- coordination is not used: see docs/adr/0004-projection-checkpoints.md.)
CREATE TABLE projection_members (
    projection  text        NOT NULL,
    member      uuid        NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (projection, member)
);

CREATE TABLE projection_leases (
    projection  text        NOT NULL,
    partition   integer     NOT NULL,
    member      uuid        NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (projection, partition)
);
