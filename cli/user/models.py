"""`tunequeue models …`: list (base models and your adapters), download (a tar of the adapter or model, with a
manifest of sha256 sums), delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.user.output import out, print_json, size, table, when
from cli.user.session import client

app = typer.Typer(no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]


@app.command("list", help="the base models and your organization's fine-tuned models")
def list_models(ctx: typer.Context, as_json: Json = False) -> None:
    found = client(ctx).list_models()
    if as_json:
        print_json(found)
        return
    out.print(table(["id", "base model", "job", "owned by", "created"],
                    ([m["id"], m.get("parent"), m.get("job_id"), m.get("owned_by"), when(m.get("created"))]
                     for m in found)))


def default_file_name(model_id: str) -> str:
    """`ft:tiny-llama:test:ftjob-…` → `ft_tiny-llama_test_ftjob-….tar`: no colons or slashes in a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id) + ".tar"


@app.command("download", help="download a model as a tar (adapter files and manifest.json)")
def download(ctx: typer.Context, model_id: str,
             output: Annotated[Path | None, typer.Option("-o", "--output", help="the tar file to write (default: "
                                                         "the model id, made a file name, .tar)")] = None,
             as_json: Json = False) -> None:
    dest = output or Path(default_file_name(model_id))
    path = client(ctx).download_model(model_id, dest)
    written = path.stat().st_size
    if as_json:
        print_json({"model": model_id, "path": str(path), "bytes": written})
    else:
        out.print(f"saved {model_id} to {path} ({size(written)})", markup=False)


@app.command("delete", help="delete one of your fine-tuned models (inference on it stops; the job stays)")
def delete(ctx: typer.Context, model_id: str, as_json: Json = False) -> None:
    result = client(ctx).delete_model(model_id)
    if as_json:
        print_json(result)
    else:
        out.print(f"deleted {model_id}", markup=False)
