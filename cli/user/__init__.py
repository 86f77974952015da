"""`tunequeue`'s user commands (docs/cli.md): typer + rich over tunequeue_client, the public HTTP API only."""
