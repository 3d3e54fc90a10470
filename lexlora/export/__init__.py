"""Export: a trained run → a validated adapter published to the registry, optionally scaled,
combined with other adapters, or merged into a full model (``lexlora export RUN_DIR``)."""
