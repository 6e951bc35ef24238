"""HTTP routes: thin handlers that parse, make one call and shape the answer."""
