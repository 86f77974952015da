"""`tunequeue chat MODEL`: an interactive chat with a base model or a fine-tuned one over
`/v1/chat/completions`, each answer streamed as it is made. The conversation is kept and sent whole each turn.
`/exit`, `/quit` or end of input (Ctrl-D) leaves; `/reset` forgets the conversation; Ctrl-C stops an answer."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Any

import typer

from cli.user.output import out, printable
from cli.user.session import client

EXIT_WORDS = ("/exit", "/quit")


def chat(ctx: typer.Context, model: Annotated[str, typer.Argument(help="a model id (tunequeue models list)")],
         system: Annotated[str | None, typer.Option("--system", help="a system message to start with")] = None,
         temperature: Annotated[float | None, typer.Option(help="0 is greedy (default: the server's, 1)")] = None,
         max_tokens: Annotated[int | None, typer.Option(help="the longest answer, in tokens")] = None,
         seed: Annotated[int | None, typer.Option(help="the same seed gives the same answer")] = None) -> None:
    api = client(ctx)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 — line editing and history for input()
    start: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    params = {k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens), ("seed", seed))
              if v is not None}
    if sys.stdin.isatty():
        out.print(f"chatting with {model}: /exit or Ctrl-D to leave, /reset to start over", markup=False,
                  style="dim")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            return
        text = line.strip()
        if text in EXIT_WORDS:
            return
        if text == "/reset":
            messages = list(start)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        answer = _stream_answer(api, model, messages, params)
        messages.append({"role": "assistant", "content": answer})


def _stream_answer(api: Any, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    parts: list[str] = []
    sys.stdout.write(f"{model}> ")
    sys.stdout.flush()
    chunks = api.stream_chat_completion(model, messages, **params)
    try:
        for chunk in chunks:
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    parts.append(piece)
                    sys.stdout.write(printable(piece))
                    sys.stdout.flush()
    except KeyboardInterrupt:
        chunks.close()  # hangs up: the server stops generating
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)
