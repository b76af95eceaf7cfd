"""The integration tests build every model from a config: nothing is downloaded from the Hub.

No offline switch is set here: ``HF_HUB_OFFLINE`` is read once, when huggingface_hub is imported, and
the analysis tests in the same pytest process talk to a local Hub-compatible server. The examples and
the subprocess workers set it for themselves.
"""
