"""HL7 v2 SIU over MLLP, both ways (issue 6): the MLLP transport (``mllp.py``), parsing and
ACKs (``parse.py``, ``ack.py``), the inbound listener and mapping (``listener.py``,
``siu_to_fhir.py``, ``inbound.py``), the outbound outbox and senders (``outbound.py``,
``fhir_to_siu.py``), the sealed message store (``messages.py``) and start-up (``runtime.py``).
See ``docs/hl7.md``."""
