"""Command line: ``deepfake --help``. Each command lives in the module named after it and adds itself to
:data:`main` when imported (``deepfake demo-data`` in ``demo_data.py``, and so on)."""

from deepfake.cli import (  # noqa: F401,E402  (each module registers its command)
    crossval,
    demo_data,
    evaluate,
    explain,
    export,
    predict,
    promote,
    register,
    report,
    sample,
    serve,
    suite,
    train,
    tune,
)
from deepfake.cli.app import main

__all__ = ["main"]
