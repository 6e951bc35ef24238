"""Database-level guards that no application code path can skip, as DDL shared by the
migration that installs them and the test fixtures that must lift them to reset a database.

The audit log refuses UPDATE and DELETE for every role (a trigger, not a grant: it holds even
when the application connects as the table's owner). Someone able to drop the trigger can
still edit rows; ``fhir-sched audit verify`` finds that.
"""

from __future__ import annotations

__all__ = ["audit_guard_create", "audit_guard_drop"]

_TABLES = ("audit_log", "audit_index")


def audit_guard_create(dialect: str) -> list[str]:
    if dialect == "postgresql":
        out = [
            "CREATE OR REPLACE FUNCTION audit_immutable() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit records cannot be changed or deleted' "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        ]
        out += [
            f"CREATE TRIGGER {t}_immutable BEFORE UPDATE OR DELETE ON {t} "
            "FOR EACH ROW EXECUTE FUNCTION audit_immutable()"
            for t in _TABLES
        ]
        out += [
            f"CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_immutable()"
            for t in _TABLES
        ]
        return out
    return [
        f"CREATE TRIGGER {t}_no_{op.lower()} BEFORE {op} ON {t} "
        "BEGIN SELECT RAISE(ABORT, 'audit records cannot be changed or deleted'); END"
        for t in _TABLES
        for op in ("UPDATE", "DELETE")
    ]


def audit_guard_drop(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return [
            f"DROP TRIGGER IF EXISTS {t}_{kind} ON {t}"
            for t in _TABLES
            for kind in ("immutable", "no_truncate")
        ]
    return [f"DROP TRIGGER IF EXISTS {t}_no_{op}" for t in _TABLES for op in ("update", "delete")]
