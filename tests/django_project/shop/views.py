"""Views that write then redirect, and views that read and say which server answered.

Every read page returns JSON: the notes' texts, the alias the router chose for reads,
the ``@@server_id`` of the server behind that alias's connection, and the request's
causal token.
"""

from __future__ import annotations

import os
from typing import Any

from asgiref.sync import sync_to_async
from django.db import Error, connections, router, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect

from sqlrouter.consistency import current_session
from sqlrouter.contrib.django import use_master

from .models import Author, Note


def _server_id(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT @@server_id")
        row = cursor.fetchone()
    return int(row[0])


def _page() -> dict[str, Any]:
    texts = list(Note.objects.order_by("id").values_list("text", flat=True))
    alias = router.db_for_read(Note)
    session = current_session()
    return {
        "notes": texts,
        "alias": alias,
        "server_id": _server_id(alias),
        "token": str(session.token) if session is not None else None,
    }


def _add(request: HttpRequest) -> None:
    author, _ = Author.objects.get_or_create(name=request.POST["author"])
    Note.objects.create(author=author, text=request.POST["text"])


def notes(request: HttpRequest) -> HttpResponseBase:
    """GET: the notes (read through the replica alias); POST: add one, redirect."""
    if request.method == "POST":
        _add(request)
        return redirect("notes")
    return JsonResponse(_page())


async def notes_async(request: HttpRequest) -> HttpResponseBase:
    """The same, as an async view using Django's async ORM."""
    if request.method == "POST":
        author, _ = await Author.objects.aget_or_create(name=request.POST["author"])
        await Note.objects.acreate(author=author, text=request.POST["text"])
        return redirect("notes-async")
    texts = [note.text async for note in Note.objects.order_by("id")]

    def where() -> tuple[str, int]:
        alias = router.db_for_read(Note)
        return alias, _server_id(alias)

    alias, server_id = await sync_to_async(where)()
    session = current_session()
    return JsonResponse(
        {
            "notes": texts,
            "alias": alias,
            "server_id": server_id,
            "token": str(session.token) if session is not None else None,
        }
    )


@use_master
def notes_on_master(request: HttpRequest) -> HttpResponse:
    """The notes, read from the master."""
    return JsonResponse(_page())


def note_in_transaction(request: HttpRequest) -> HttpResponse:
    """Add a note and read it back inside one transaction (the read must see it)."""
    with transaction.atomic():
        author, _ = Author.objects.get_or_create(name=request.POST["author"])
        note = Note.objects.create(author=author, text=request.POST["text"])
        found = Note.objects.filter(pk=note.pk).exists()
        alias = router.db_for_read(Note)
    return JsonResponse({"found": found, "alias": alias})


def where(request: HttpRequest) -> HttpResponse:
    """Which process answered, and where its reads and its writes go (0 and the error,
    when one fails: while a switchover runs, say)."""
    answer: dict[str, Any] = {"pid": os.getpid()}
    for key, alias in (("read", "replica"), ("write", "default")):
        try:
            answer[key] = _server_id(alias)
        except Error as exc:
            answer[key] = 0
            answer[f"{key}_error"] = str(exc)
    return JsonResponse(answer)
