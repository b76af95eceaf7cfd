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


def test_a_missing_framework_says_which_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['lightning'] = sys.modules['transformers'] = None  # as if not installed\n"
        "for name in ('weightslab.integrations.lightning', 'weightslab.integrations.transformers'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "weightslab.integrations.lightning needs Lightning >= 2.4: pip install 'weightslab[lightning]'",
        "weightslab.integrations.transformers needs transformers >= 4.44: pip install 'weightslab[transformers]'",
    ]
