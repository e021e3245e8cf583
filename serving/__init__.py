"""The BentoML retriever service: service.py (HTTP wiring), deployment.py (the loaded versions a
request reads, switched without downtime), retriever.py and search.py (what a request does),
store_watch.py (the online store's watermark, checked in the background), schema.py (the
contracts), limits.py (body checks), batcher.py, process.py (the service as a child process).

Serving imports from pipelines only what it needs (encoder and index loading, the blend, the
online feature client, the watermark check, query normalization); pipelines never imports serving."""
