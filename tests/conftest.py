import sys
from pathlib import Path

# Let test modules import helper modules that live beside them (e.g. `import tiny_gguf`).
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from child_processes import tie_children_to_this_process  # noqa: E402

tie_children_to_this_process()

pytest_plugins = ["suite_report"]
