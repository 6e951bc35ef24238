"""The storage schema, as SQLAlchemy 2 declarative tables.

``resource`` holds one row per logical resource (its current version pointer); every version's
sealed body lives in ``resource_version`` and is never rewritten (only its wrapped data key is,
by key rotation).  Search index tables hold the *current* version's values, keyed by
``resource.seq``.  PHI search values go only to ``idx_blind`` as keyed digests.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "BUSY_IS_LONG",
    "LONG_SPAN",
    "SLOT_IS_LONG",
    "AuditHead",
    "AuditIndex",
    "AuditLog",
    "AuthCode",
    "AuthJti",
    "AuthLaunch",
    "AuthToken",
    "Base",
    "BusyTime",
    "IdempotencyKey",
    "IdxBlind",
    "IdxDate",
    "IdxNumber",
    "IdxReference",
    "IdxString",
    "IdxToken",
    "OAuthClient",
    "OAuthUser",
    "ResourceRow",
    "ResourceVersion",
    "SigninThrottle",
]

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ResourceRow(Base):
    """Current-version pointer for one logical resource."""

    __tablename__ = "resource"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(64))
    res_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (
        UniqueConstraint("res_type", "res_id"),
        Index("ix_resource_type_updated", "res_type", "last_updated", "seq"),
    )


class ResourceVersion(Base):
    """One immutable version: sealed body (NULL for a delete) and its wrapped data key."""

    __tablename__ = "resource_version"
    res_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    method: Mapped[str] = mapped_column(String(8))  # POST, PUT, PATCH, DELETE
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    kek_id: Mapped[str | None] = mapped_column(String(64))
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    nonce: Mapped[bytes | None] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    __table_args__ = (
        Index("ix_version_type_updated", "res_type", "last_updated"),
        Index("ix_version_kek", "kek_id"),
    )


class IdxString(Base):
    """Plain (non-PHI) string values: normalised for starts-with/contains, and exact."""

    __tablename__ = "idx_string"
    pk: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    res_type: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    value_norm: Mapped[str] = mapped_column(Text)
    value_exact: Mapped[str] = mapped_column(Text)
    __table_args__ = (Index("ix_idx_string_lookup", "res_type", "param", "value_norm", "seq"),)


class IdxToken(Base):
    """Plain token values (system, code)."""

    __tablename__ = "idx_token"
    pk: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    res_type: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(Text)
    code: Mapped[str] = mapped_column(Text)
    __table_args__ = (Index("ix_idx_token_lookup", "res_type", "param", "code", "seq"),)


class IdxDate(Base):
    """Date ranges as UTC instants: ``low`` inclusive, ``high`` exclusive."""

    __tablename__ = "idx_date"
    pk: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    res_type: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    low: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    high: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (Index("ix_idx_date_lookup", "res_type", "param", "low", "seq"),)


class IdxNumber(Base):
    """Plain number values (a decimal as a double): the no-show risk score of an Appointment.
    A search's implicit range (``eq0.5`` is [0.45, 0.55)) is computed from the query."""

    __tablename__ = "idx_number"
    pk: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    res_type: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_idx_number_lookup", "res_type", "param", "value", "seq"),)


class IdxReference(Base):
    """References; ``target_type`` is NULL for absolute URLs outside this server."""

    __tablename__ = "idx_reference"
    pk: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    res_type: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(64))
    target_id: Mapped[str] = mapped_column(Text)
    __table_args__ = (
        Index("ix_idx_reference_lookup", "res_type", "param", "target_id", "seq"),
        Index("ix_idx_reference_target", "target_id", "target_type"),
    )


class IdxBlind(Base):
    """Keyed digests of PHI search values (see security.crypto.KeyRing.blind)."""

    __tablename__ = "idx_blind"
    pk: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    res_type: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    digest: Mapped[bytes] = mapped_column(LargeBinary(16))
    __table_args__ = (Index("ix_idx_blind_lookup", "res_type", "param", "digest", "seq"),)


# Overlap queries on Slots and busy time ("starts before the window ends and ends after it
# starts") range-scan only the rows that start at most LONG_SPAN before the window, so their
# cost does not grow with a schedule's history; the rare longer rows (an on-call Slot, a leave
# block sent by an EMR) come from a partial index of their own. The predicates are SQL text,
# the same in each index and in the queries that must match it.
LONG_SPAN = timedelta(days=1)
SLOT_IS_LONG = "end_s - start_s > 86400"
BUSY_IS_LONG = {
    "sqlite": 'julianday("end") - julianday(start) > 1',
    "postgresql": "\"end\" - start > interval '1 day'",
}


class SlotTime(Base):
    """Each live Slot's schedule, times and status, for ``$find``: one index range scan per
    schedule instead of intersecting three generic index lookups.  Maintained with the other
    index rows on every Slot write (see ``resources.indexing``); none of it is patient data."""

    __tablename__ = "slot_time"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    slot_id: Mapped[str] = mapped_column(String(64))
    schedule_id: Mapped[str] = mapped_column(String(64))
    start_s: Mapped[int] = mapped_column(BigInteger)  # UTC epoch seconds: no parsing per row
    end_s: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32))
    # covering: $find reads a schedule's free Slots in start order from the index alone
    __table_args__ = (
        Index("ix_slot_time_free", "schedule_id", "status", "start_s", "end_s", "slot_id"),
        # covering too: planned generically (prepared), PostgreSQL would otherwise prefer
        # ix_slot_time_free's scan of the whole schedule for the long branch (migration 0010)
        Index(
            "ix_slot_time_long",
            "schedule_id",
            "start_s",
            "end_s",
            "slot_id",
            sqlite_where=text(SLOT_IS_LONG),
            postgresql_where=text(SLOT_IS_LONG),
        ),
    )


class BusyTime(Base):
    """Time taken on a Schedule: booked visits, buffers and unexpired holds.

    The double-booking guard lives here, in the database: on PostgreSQL an exclusion
    constraint over (schedule, time range); on SQLite a trigger that refuses any row overlapping
    another on the same schedule (writes are serialised by ``BEGIN IMMEDIATE``, so the check and
    the insert cannot race).  Code that bypasses the booking service is refused all the same.
    """

    __tablename__ = "busy_time"
    pk: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(String(64))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    appointment_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # booked | buffer | held
    visit_type: Mapped[str | None] = mapped_column(String(64))  # for per-day caps and buffers
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        CheckConstraint('start < "end"', name="ck_busy_time_positive"),
        Index("ix_busy_time_schedule_start", "schedule_id", "start"),
        Index("ix_busy_time_appointment", "appointment_id"),
        Index(
            "ix_busy_time_long",
            "schedule_id",
            "start",
            sqlite_where=text(BUSY_IS_LONG["sqlite"]),
            postgresql_where=text(BUSY_IS_LONG["postgresql"]),
        ),
    )


class IdempotencyKey(Base):
    """The first result of a ``$book`` retried with the same key (header or identifier), kept
    for the principal that sent it: the client, the signed-in user and the patient of a
    patient-context token ('' where there is none), and the SHA-256 of the request it came with.

    Rows from before revision 0011 have the client '' (no registered client has that id) and no
    request hash, so they never replay to anyone."""

    __tablename__ = "idempotency_key"
    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    operation: Mapped[str] = mapped_column(String(32))
    status: Mapped[int] = mapped_column(Integer)
    res_type: Mapped[str] = mapped_column(String(64))
    res_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- SMART authorization (security/smart) --------------------------------------------------------
# Secrets are never stored: client secrets and passwords as argon2id hashes, tokens and codes as
# SHA-256 digests, user names as keyed blind digests (a patient's login can be an e-mail address).


class OAuthClient(Base):
    """A registered SMART client and the most it may be granted."""

    __tablename__ = "oauth_client"
    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # public | symmetric | asymmetric
    secret_hash: Mapped[str | None] = mapped_column(String(200))
    jwks: Mapped[str | None] = mapped_column(Text)  # public keys only (JSON)
    jwks_uri: Mapped[str | None] = mapped_column(String(500))
    scope: Mapped[str] = mapped_column(Text)  # the most this client may be granted
    redirect_uris: Mapped[str] = mapped_column(Text)  # space-separated, matched exactly
    grant_types: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class OAuthUser(Base):
    """Someone who signs in: front desk, clinician, compliance officer or patient."""

    __tablename__ = "oauth_user"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    login_digest: Mapped[bytes] = mapped_column(LargeBinary(16), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    fhir_user: Mapped[str | None] = mapped_column(String(200))  # e.g. Practitioner/abc
    patients: Mapped[str] = mapped_column(Text, default="")  # Patient ids this user may act for
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class AuthCode(Base):
    """An authorization code: single use, short-lived, bound to client and redirect URI."""

    __tablename__ = "auth_code"
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100))
    redirect_uri: Mapped[str] = mapped_column(String(500))
    scope: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(String(64))
    patient: Mapped[str | None] = mapped_column(String(64))
    nonce: Mapped[str | None] = mapped_column(String(200))
    code_challenge: Mapped[str] = mapped_column(String(200))
    grant_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class AuthToken(Base):
    """An issued access or refresh token (by digest). ``grant_id`` ties together everything
    one authorization issued, so a replayed code or a revocation can end all of it."""

    __tablename__ = "auth_token"
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # access | refresh
    client_id: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(String(64))
    patient: Mapped[str | None] = mapped_column(String(64))
    grant_id: Mapped[str] = mapped_column(String(64), index=True)
    jti: Mapped[str] = mapped_column(String(64))  # what logs and AuditEvents may quote
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AuthJti(Base):
    """Client assertion ids seen (RFC 7523 §3: a ``jti`` may be used only once)."""

    __tablename__ = "auth_jti"
    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    jti: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AuthLaunch(Base):
    """An EHR launch context minted by this server (the ``launch`` parameter)."""

    __tablename__ = "auth_launch"
    launch_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    patient: Mapped[str | None] = mapped_column(String(64))
    encounter: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SigninThrottle(Base):
    """Failed sign-ins counted per account and per client address (security/smart/
    throttle.py); the key is a keyed digest, so neither login names nor addresses are stored."""

    __tablename__ = "signin_throttle"
    key: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    blocked_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- the audit log (security/audit.py) -----------------------------------------------------------


class AuditLog(Base):
    """One AuditEvent: sealed body, plain search columns, its place in the hash chain.
    Triggers refuse UPDATE and DELETE (migration 0006)."""

    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    type_code: Mapped[str] = mapped_column(String(64))
    subtype_code: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(1))
    outcome: Mapped[str] = mapped_column(String(2))
    source: Mapped[str] = mapped_column(String(200))
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    mac: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditIndex(Base):
    """Keyed digests of the patient, agent and entity references an AuditEvent names."""

    __tablename__ = "audit_index"
    pk: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    param: Mapped[str] = mapped_column(String(16))
    digest: Mapped[bytes] = mapped_column(LargeBinary(16))
    __table_args__ = (Index("ix_audit_index_lookup", "param", "digest", "seq"),)


class AuditHead(Base):
    """The chain's last sequence number and MAC (one row, id 1)."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    mac: Mapped[bytes] = mapped_column(LargeBinary(32))


# -- HL7 v2 bridge (hl7_bridge) ------------------------------------------------------------------
# Every message in and out, sealed like a resource body (it carries PHI); the columns beside it
# are what staff need to find and replay one without opening it.


class HL7Message(Base):
    """One HL7 message received or to be sent, with the ACK that answered it."""

    __tablename__ = "hl7_message"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)  # AAD of the sealed body
    direction: Mapped[str] = mapped_column(String(3))  # in | out
    peer: Mapped[str] = mapped_column(String(200))  # sender key (in) or endpoint name (out)
    control_id: Mapped[str] = mapped_column(String(200))  # MSH-10
    event: Mapped[str] = mapped_column(String(16))  # e.g. SIU^S12
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    ack_code: Mapped[str | None] = mapped_column(String(2))
    appointment_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)  # why it failed (no message content)
    warnings: Mapped[str | None] = mapped_column(String(200))  # codes: applied with a caveat
    digest: Mapped[bytes | None] = mapped_column(LargeBinary(16))  # content, for resends
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)  # {"message", "ack", "address"}
    __table_args__ = (
        # a resend is the same control id *and* content (messages.content_key)
        UniqueConstraint(
            "direction", "peer", "control_id", "digest", name="uq_hl7_message_content"
        ),
        Index("ix_hl7_message_status", "direction", "status", "next_attempt"),
    )


class HL7Link(Base):
    """A sender's appointment key (SCH-1 placer or SCH-2 filler id) → our Appointment, and the
    MSH-7 of the newest message applied to it (an older one arriving late is not applied)."""

    __tablename__ = "hl7_link"
    sender: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # placer | filler
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    appointment_id: Mapped[str] = mapped_column(String(64))  # read with its key, never looked up
    last_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OutreachMessage(Base):
    """One automated text to a patient (a reminder, a waitlist offer, a notice), claimed before
    it is sent: ``dedupe`` is unique, so two workers, or a restart, never send it twice."""

    __tablename__ = "outreach_message"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # AAD of the sealed body
    kind: Mapped[str] = mapped_column(String(12))  # reminder | offer | notice
    dedupe: Mapped[str] = mapped_column(String(200), unique=True)
    appointment_id: Mapped[str | None] = mapped_column(String(64), index=True)
    to_digest: Mapped[bytes] = mapped_column(LargeBinary(16), index=True)
    state: Mapped[str] = mapped_column(String(10))  # sending | sent | failed | unknown | skipped
    provider: Mapped[str | None] = mapped_column(String(16))
    provider_id: Mapped[str | None] = mapped_column(String(200))
    communication_id: Mapped[str | None] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    answer: Mapped[str | None] = mapped_column(String(12))  # yes | cancel | other
    answered: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)  # {"to", "body"}
    __table_args__ = (Index("ix_outreach_message_to_sent", "to_digest", "sent"),)


class OutreachOptOut(Base):
    """A number that texted STOP (or START again): automated messages skip it."""

    __tablename__ = "outreach_optout"
    to_digest: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    opted_out: Mapped[bool] = mapped_column(Boolean)
    changed: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutreachEscalation(Base):
    """An appointment for the staff queue (a cancellation inside the clinic's notice window),
    recorded in the transaction that made it and handed to the queue once by a job."""

    __tablename__ = "outreach_escalation"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dedupe: Mapped[str] = mapped_column(String(200), unique=True)  # late-cancel:<appointment>
    reason: Mapped[str] = mapped_column(String(32))
    appointment_id: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    done: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class WaitlistFreed(Base):
    """Time a cancellation freed, queued in the cancelling transaction for the waitlist job."""

    __tablename__ = "waitlist_freed"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    appointment_id: Mapped[str] = mapped_column(String(64))  # the cancelled Appointment
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    done: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class WaitlistOffer(Base):
    """Freed time offered to waitlisted patients, held (``hold_id``, a pending Appointment)
    while the offer stands; the first YES takes it."""

    __tablename__ = "waitlist_offer"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    freed_id: Mapped[str] = mapped_column(String(36), index=True)
    hold_id: Mapped[str | None] = mapped_column(String(64))
    practitioner: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(String(64))
    visit_type: Mapped[str] = mapped_column(String(64))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(10))  # open | taken | expired | withdrawn
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    taken_by: Mapped[str | None] = mapped_column(String(64))  # the waitlist Appointment
    __table_args__ = (Index("ix_waitlist_offer_state", "state", "expires"),)


class WaitlistOffered(Base):
    """Who an offer went to; (waitlist entry, time) is unique: nobody gets one offer twice."""

    __tablename__ = "waitlist_offered"
    offer_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    waitlist_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot_key: Mapped[str] = mapped_column(String(200))  # practitioner|location|start (UTC)
    message_id: Mapped[str | None] = mapped_column(String(36))
    answer: Mapped[str | None] = mapped_column(String(12))  # yes | no | late
    __table_args__ = (UniqueConstraint("waitlist_id", "slot_key", name="uq_waitlist_offered_time"),)
