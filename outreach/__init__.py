"""Outreach: what the clinic sends patients without being asked, and their answers.

* ``outreach/sending.py``: one automated text, sent at most once (claimed in
  ``outreach_message`` before the provider is called, marked sent with the provider's id and
  recorded as a FHIR ``Communication`` about the Appointment), skipped for numbers that opted
  out (STOP).
* ``outreach/reminders.py``: the reminder job (the clinic file's ``reminders`` section).
* ``outreach/replies.py``: an inbound text that answers one of those messages (YES, CANCEL,
  STOP, START); anything else is the booking agent's, with the appointment in context.
* ``outreach/waitlist.py``: time freed by a cancellation offered to waitlisted patients.

The package sits on floor 2 beside ``agent`` and ``hl7_bridge`` and imports neither: the SMS
provider and the agent's conversations are handed in by ``fhir_server`` as plain callables and
protocols. It acts on appointments with ``scheduling``'s booking functions, the domain side of
``$book``, in the server's own transactions.
"""
