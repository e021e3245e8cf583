"""Engagement prediction: calibrated pCTR / pCVR over users, queries and items from the feature store."""
