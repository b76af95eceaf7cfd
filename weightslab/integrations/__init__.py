"""Adapters of the checkpoint system to the trainers and checkpoint APIs users already have.

``weightslab.integrations.lightning`` (a Lightning callback) and ``weightslab.integrations.transformers``
(a Hugging Face ``TrainerCallback``) import their framework, so they are imported only by name, never
from here: ``import weightslab`` never imports Lightning or transformers.
"""
