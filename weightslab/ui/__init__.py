"""The local web dashboard: ``weightslab ui``."""
