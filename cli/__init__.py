"""The `tunequeue` command: admin and developer tasks (cli/main.py). It may import common/ and worker/; nothing
imports it."""
