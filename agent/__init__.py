"""The booking agent: patients book, cancel and move appointments by SMS and web chat.

A FHIR client and nothing more: it reaches the server over HTTP as a SMART Backend Services
client allowed only ``Appointment/$find`` and ``Appointment/$book`` (see ``agent/fhir.py``),
so every clinic rule, lock, audit record and race applies to it as to any other client.
"""
