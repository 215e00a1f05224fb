"""Two models with a foreign key and a unique column."""

from __future__ import annotations

from datetime import datetime

from django.db import models


class Author(models.Model):
    name: models.CharField[str, str] = models.CharField(max_length=100, unique=True)

    def __str__(self) -> str:
        return self.name


class Note(models.Model):
    author: models.ForeignKey[Author, Author] = models.ForeignKey(
        Author, on_delete=models.CASCADE, related_name="notes"
    )
    text: models.CharField[str, str] = models.CharField(max_length=200)
    created: models.DateTimeField[datetime, datetime] = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text
