"""Feature-store operations over the Feast repo: apply, materialize, datasets, online reads."""
