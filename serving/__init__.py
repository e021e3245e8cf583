"""The BentoML retriever service: service.py (HTTP wiring), retriever.py (what a request does),
schema.py (the /retrieve contract), limits.py (body checks), config.py (settings).

Serving imports from pipelines only what it needs (encoder and index loading, the blend, the
online feature client, query normalization); pipelines never imports serving."""
