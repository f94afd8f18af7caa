"""The ReGenesis method and baselines as plain functions over typed records; the engine is passed in."""
