"""An EMR the bridge sends SIU messages to, as the server's settings describe it
(``FHIRSCHED_HL7_ENDPOINTS``, a JSON list)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["HL7Endpoint"]


class HL7Endpoint(BaseModel):
    """An EMR that receives SIU messages for changes made here."""

    name: str = Field(min_length=1, max_length=100, description="How logs and staff name it")
    host: str
    port: int = Field(ge=1, le=65535)
    application: str = Field(default="", description="MSH-5 (its receiving application)")
    facility: str = Field(default="", description="MSH-6 (its receiving facility)")
    senders: list[str] = Field(
        default_factory=list,
        description="Its own inbound sender keys (MSH-3.MSH-4, e.g. EPIC.MSFP): changes it "
        "sent us are not echoed back to it",
    )
    version: str = Field(default="2.5.1", description="MSH-12 of the messages it receives")
