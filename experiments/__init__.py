"""The shipped configurations (``configs/*.yaml``) and search spaces (``search_space*.yaml``).

This folder is the repository's ``experiments/``; pyproject.toml maps it into the package as
``deepfake.experiments`` (``package-dir``), so a wheel or an editable install carries it and the
``deepfake`` command finds the files by name from any folder (``deepfake.config.find_file``).
"""
