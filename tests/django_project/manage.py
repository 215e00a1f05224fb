"""``python -m tests.django_project.manage COMMAND``: Django's commands for the test project.

Run from the repository root, with ``SQLROUTER_DJANGO_URL`` set (see settings.py).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
