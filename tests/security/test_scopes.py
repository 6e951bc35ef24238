"""SMART scope grammar (v1 and v2, granular) and what granted scopes permit."""

from __future__ import annotations

import pytest

from security.scopes import Grants, Scope, ScopeError, parse_scope


@pytest.mark.parametrize(
    ("text", "perms"),
    [
        ("patient/Appointment.read", "rs"),
        ("patient/Appointment.rs", "rs"),
        ("user/Slot.write", "cud"),
        ("user/Slot.cud", "cud"),
        ("system/*.*", "cruds"),
        ("system/*.cruds", "cruds"),
        ("patient/Patient.r", "r"),
        ("user/Appointment.s", "s"),
        ("user/Appointment.cu", "cu"),
    ],
)
def test_v1_and_v2_forms(text: str, perms: str) -> None:
    scope = parse_scope(text)
    assert scope is not None
    assert scope.permissions == frozenset(perms)


def test_v1_is_v2_shorthand() -> None:
    assert parse_scope("patient/Appointment.read") == parse_scope("patient/Appointment.rs")
    assert parse_scope("user/*.write") == parse_scope("user/*.cud")


@pytest.mark.parametrize(
    "text",
    [
        "patient/Appointment.sr",  # out of order
        "patient/Appointment.rr",  # repeated
        "patient/Appointment.x",
        "patient/Appointment.readwrite",
        "patient/Appointment.",
        "patient/Appointment",
        "clinic/Appointment.rs",  # unknown context
        "patient/appointment.rs",  # not a resource type
        "patient/Appointment.rs?",  # '?' without parameters
        "patient/Appointment.rs?status",  # no value
        "patient/*.rs?status=booked",  # parameters need a type
        "Appointment.rs",
        "anything",
    ],
)
def test_malformed_scopes_are_refused(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)
    with pytest.raises(ScopeError):
        Grants.parse(f"openid {text}")


@pytest.mark.parametrize(
    "text", ["openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access"]
)
def test_non_resource_scopes_are_kept_aside(text: str) -> None:
    assert parse_scope(text) is None
    grants = Grants.parse(f"{text} patient/Slot.rs")
    assert grants.other == {text}
    assert len(grants.scopes) == 1


def test_permits_by_context_type_and_permission() -> None:
    g = Grants.parse("patient/Appointment.rs user/*.read system/Slot.cud")
    assert g.permits("patient", "Appointment", "r")
    assert g.permits("patient", "Appointment", "s")
    assert not g.permits("patient", "Appointment", "c")
    assert not g.permits("patient", "Slot", "r")  # another type
    assert not g.permits("user", "Appointment", "c")  # user scope is read-only
    assert g.permits("user", "Patient", "s")  # wildcard type
    assert not g.permits("system", "Slot", "r")
    assert g.permits("system", "Slot", "u")
    assert not g.permits("system", "Appointment", "u")


def test_granular_scopes_give_search_filters() -> None:
    g = Grants.parse("patient/Appointment.rs?status=booked patient/Appointment.rs?status=pending")
    assert g.filters("patient", "Appointment", "s") == [
        (("status", "booked"),),
        (("status", "pending"),),
    ]
    # an unrestricted scope for the same access lifts the restriction
    wide = Grants.parse("patient/Appointment.rs?status=booked patient/Appointment.read")
    assert wide.filters("patient", "Appointment", "r") == [()]
    assert Grants.parse("user/Slot.rs").filters("patient", "Slot", "r") == []


def test_narrowing_never_widens_scope() -> None:
    granted = Grants.parse("patient/Appointment.rs patient/Slot.rs openid offline_access")
    asked = Grants.parse("patient/Appointment.cruds patient/Slot.r user/Patient.rs openid")
    narrowed = granted.narrowed(asked)
    # what both allow: Appointment read/search only, Slot read, nothing in user/ context
    assert str(narrowed) == "patient/Appointment.rs patient/Slot.r openid"


@pytest.mark.parametrize(
    ("allowed", "asked", "expected"),
    [
        (
            "patient/Patient.rs patient/Slot.rs",
            "patient/*.rs",
            "patient/Patient.rs patient/Slot.rs",
        ),
        ("system/*.cruds", "system/Appointment.$book", "system/Appointment.$book"),
        ("system/Appointment.rs", "system/Appointment.$book", ""),
        (
            "user/Appointment.rs?status=booked",
            "user/Appointment.r",
            "user/Appointment.r?status=booked",
        ),
        ("user/Appointment.rs?status=booked", "user/Appointment.rs?status=proposed", ""),
    ],
)
def test_narrowing_intersects(allowed: str, asked: str, expected: str) -> None:
    assert str(Grants.parse(allowed).narrowed(Grants.parse(asked))) == expected


def test_round_trip() -> None:
    text = "patient/Appointment.rs?status=booked user/*.cruds launch/patient openid"
    g = Grants.parse(text)
    assert Grants.parse(str(g)) == g
    assert str(Scope("user", "Slot", frozenset("sr"))) == "user/Slot.rs"


def test_module_examples() -> None:
    import doctest

    import security.scopes

    assert doctest.testmod(security.scopes).failed == 0


@pytest.mark.parametrize("context", ["patient", "user", "system"])
@pytest.mark.parametrize(
    ("registered", "asked"),
    [
        ("*.cruds", "AuditEvent.rs"),
        ("*.rs", "AuditEvent.r"),
        ("*.cruds", "AuditEvent.read"),
        ("*.read", "AuditEvent.read"),
        ("*.*", "AuditEvent.rs"),
        ("*.*", "AuditEvent.*"),
    ],
)
def test_a_wildcard_never_grants_the_audit_log(context: str, registered: str, asked: str) -> None:
    """The audit log is granted only where it is named: a wildcard registration or role
    (``system/*.cruds``) asked for ``system/AuditEvent.rs`` grants nothing of it."""
    allowed = Grants.parse(f"{context}/{registered} {context}/Patient.rs")
    narrowed = allowed.narrowed(Grants.parse(f"{context}/{asked} {context}/Patient.r"))
    assert str(narrowed) == f"{context}/Patient.r"
    assert not allowed.permits(context, "AuditEvent", "r")
    assert not allowed.permits(context, "AuditEvent", "s")


@pytest.mark.parametrize(
    ("allowed", "asked", "expected"),
    [
        ("system/AuditEvent.rs", "system/AuditEvent.rs", "system/AuditEvent.rs"),
        ("system/AuditEvent.read", "system/AuditEvent.r", "system/AuditEvent.r"),
        ("user/AuditEvent.rs user/*.cruds", "user/AuditEvent.rs", "user/AuditEvent.rs"),
        # nor is a wildcard asked for narrowed to it (it may come from a wildcard registration)
        ("system/AuditEvent.rs", "system/*.rs", ""),
        ("user/AuditEvent.rs", "user/*.read", ""),
    ],
)
def test_the_audit_log_is_granted_only_by_name(allowed: str, asked: str, expected: str) -> None:
    assert str(Grants.parse(allowed).narrowed(Grants.parse(asked))) == expected
