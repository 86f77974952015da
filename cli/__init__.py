"""The `tunequeue` command (cli/main.py): the user commands over the public API (cli/user/, built on
tunequeue_client only) and the operator's admin, db and dev commands (cli/ops.py), which may import common/ and
worker/. Nothing imports it."""
