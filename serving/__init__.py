"""The BentoML retriever service (issue 6). Not built yet: the foundation exposes the online
feature client it will use, pipelines.features.online.OnlineFeatures."""
