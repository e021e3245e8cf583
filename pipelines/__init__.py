"""unisup pipelines: ingest, signal producers, feature-store operations, training and evaluation."""
