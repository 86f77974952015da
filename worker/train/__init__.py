"""The training child process: `python -m worker.train <job_dir>` (see `worker.train.__main__`).

Kept import-light on purpose: the child installs its SIGTERM handler before torch and transformers load.
"""
