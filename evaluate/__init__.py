"""Evaluation: YAML suites against any OpenAI endpoint, metrics with provenance, paired statistics,
CI gates and reports. Imports as `lorafleet.evaluate` (never a top-level `evaluate`)."""

if __name__ == "evaluate":
    # Python run from the repo root (`python -c`, `python -m pytest`) puts the root first on sys.path, so
    # `import evaluate` finds this folder. It is lorafleet.evaluate, not Hugging Face's `evaluate`: hand the
    # name over to the installed package, so code that means the library gets the library.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _elsewhere = [p for p in sys.path if os.path.realpath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("evaluate", _elsewhere)
    if _spec is None or _spec.loader is None:
        raise ImportError("Hugging Face's `evaluate` is not installed (`pip install evaluate`); this `evaluate` "
                          "folder is lorafleet's evaluation part: import it as lorafleet.evaluate")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["evaluate"] = _module  # the import statement returns what sys.modules holds once this file ends
    _spec.loader.exec_module(_module)
