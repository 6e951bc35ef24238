"""The scheduling domain: the clinic file, availability, rules, ``$find``, ``$hold`` and
``$book``.

``config`` reads the clinic file; ``clinic`` turns it into Practitioner, Location,
HealthcareService and Schedule resources and loads them; ``availability`` materialises Slots
over the rolling horizon; ``rules`` holds the practice rules as data; ``plan`` checks a
``$find`` and chooses its schedules, ``calendar_reads`` reads the calendar it needs and
``find`` composes the options; ``booking`` holds, books, modifies, cancels and reschedules.

It imports neither the web framework nor ``fhir_server`` (import-linter, ``pyproject.toml``):
the HTTP handlers of the operations live in ``fhir_server/scheduling_handlers.py``.
"""
