"""The bottom floor: what every package may use.

``errors`` is the ``FHIRError`` tree (each error knows its HTTP status, OperationOutcome issue
code and stable message id); ``logging`` configures structlog and the stdlib logger to write
JSON events. Nothing here imports another package of the project.
"""
