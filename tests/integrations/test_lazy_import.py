"""``import weightslab`` (and the adapters of other checkpoint APIs) never import Lightning or transformers."""

from __future__ import annotations

import subprocess
import sys


def test_importing_weightslab_imports_no_trainer_framework() -> None:
    code = (
        "import sys, weightslab, weightslab.components, weightslab.integrations, weightslab.cli.main\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'transformers', 'accelerate'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
