"""A small Django project run by tests/integration/test_django.py on a sandbox cluster."""
