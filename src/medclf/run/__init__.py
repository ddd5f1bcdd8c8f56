"""The run directory on disk: atomic writes, folder names, and `RunSpec`, the one reader and writer of
train_config.json."""
