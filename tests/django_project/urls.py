"""URLs of the test project."""

from __future__ import annotations

from django.urls import path

from .shop import views

urlpatterns = [
    path("notes/", views.notes, name="notes"),
    path("notes/async/", views.notes_async, name="notes-async"),
    path("notes/master/", views.notes_on_master, name="notes-master"),
    path("notes/atomic/", views.note_in_transaction, name="notes-atomic"),
    path("where/", views.where, name="where"),
]
