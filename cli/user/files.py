"""`tunequeue files …`: upload (with the validation result: line-numbered errors and their fix), list, get,
preview (trained spans highlighted), delete."""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.user.exits import FILE_INVALID, USAGE, UserError
from cli.user.output import out, pairs, print_json, size, table, when
from cli.user.preview import render_preview
from cli.user.session import client

app = typer.Typer(no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]
UNFINISHED = ("uploaded", "pending", "running")


@app.command("upload", help="upload a dataset and print its validation result (exit 4 when it has errors)")
def upload(ctx: typer.Context, path: Annotated[Path, typer.Argument(help="JSONL, JSON, CSV, TSV, Parquet or .txt")],
           format: Annotated[str | None, typer.Option(help="chat, sharegpt, alpaca, preference, kto or text; "
                                                      "default: detected")] = None,
           wait: Annotated[bool, typer.Option("--wait", help="wait until the file's status is final (the API "
                                              "checks before it answers, so it is already)")] = False,
           as_json: Json = False) -> None:
    if not path.is_file():
        raise UserError(f"{path}: no such file", USAGE)
    api = client(ctx)
    file = api.upload_file(path, format=format)
    while wait and file.get("status") in UNFINISHED:
        time.sleep(1)
        file = api.get_file(file["id"])
    if as_json:
        print_json(file)
    else:
        show_validation(file)
    if file.get("status") == "error":
        raise typer.Exit(FILE_INVALID)


def show_validation(file: dict[str, Any]) -> None:
    head = escape(f"{file['id']}  {file.get('filename')}  {size(file.get('bytes'))}  {file.get('row_count')} rows")
    if file.get("status") == "processed":
        stages = ", ".join(file.get("stages") or [])
        out.print(f"{head}  [green]processed[/]: format {file.get('format')}, trains stage {stages}",
                  highlight=False)
        return
    errors = file.get("errors") or []
    out.print(f"{head}  [red]{file.get('status')}[/]: {len(errors)} problem(s)"
              + (f" in {file['format']} format" if file.get("format") else ""), highlight=False)
    # Each message starts with where the problem is and ends with how to fix it.
    out.print(table(["line", "field", "code", "problem and fix"],
                    ([e.get("line"), e.get("field"), e.get("code"), e.get("message")] for e in errors)))
    out.print("Fix these lines and upload the file again.")


@app.command("list", help="your organization's files, newest first")
def list_files(ctx: typer.Context, user: Annotated[str | None, typer.Option(help="only this user's")] = None,
               limit: Annotated[int, typer.Option(help="at most this many")] = 20, as_json: Json = False) -> None:
    found: list[dict[str, Any]] = list(islice(client(ctx).list_files(user=user), limit))
    if as_json:
        print_json(found)
        return
    out.print(table(["id", "filename", "status", "format", "rows", "size", "user", "created"],
                    ([f["id"], f.get("filename"), f.get("status"), f.get("format"), f.get("row_count"),
                      size(f.get("bytes")), f.get("user"), when(f.get("created_at"))] for f in found)))


@app.command("get", help="one file: its status, format, stages and errors")
def get(ctx: typer.Context, file_id: str, as_json: Json = False) -> None:
    file = client(ctx).get_file(file_id)
    if as_json:
        print_json(file)
        return
    out.print(pairs([("id", file["id"]), ("filename", file.get("filename")), ("status", file.get("status")),
                     ("format", file.get("format")), ("stages", ", ".join(file.get("stages") or [])),
                     ("rows", file.get("row_count")), ("size", size(file.get("bytes"))),
                     ("sha256", file.get("sha256")), ("user", file.get("user")),
                     ("created", when(file.get("created_at")))]))
    if file.get("errors"):
        show_validation(file)


@app.command("preview", help="the first rows as the trainer sees them, trained spans highlighted")
def preview(ctx: typer.Context, file_id: str,
            limit: Annotated[int, typer.Option(help="rows (1-20)")] = 3,
            stage: Annotated[str | None, typer.Option(help="default: the file's first stage")] = None,
            base_model: Annotated[str | None, typer.Option(help="whose tokenizer and chat template")] = None,
            template: Annotated[str | None, typer.Option(help="a built-in chat template instead")] = None,
            train_on_inputs: Annotated[bool, typer.Option(help="train on every token")] = False,
            as_json: Json = False) -> None:
    params = {k: v for k, v in (("limit", limit), ("stage", stage), ("base_model", base_model),
                                ("template", template)) if v is not None}
    if train_on_inputs:
        params["train_on_inputs"] = "true"
    found = client(ctx).preview_file(file_id, **params)
    if as_json:
        print_json(found)
        return
    for part in render_preview(found, colour=out.color_system is not None):
        out.print(part, highlight=False)


@app.command("delete", help="delete a file (refused while an unfinished job uses it)")
def delete(ctx: typer.Context, file_id: str, as_json: Json = False) -> None:
    result = client(ctx).delete_file(file_id)
    if as_json:
        print_json(result)
    else:
        out.print(f"deleted {file_id}", markup=False)
