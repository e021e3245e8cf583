"""Signal producers: each writes the table behind one feature view (see pipelines.signals.spec)."""
