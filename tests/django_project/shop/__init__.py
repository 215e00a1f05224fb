"""The test project's app: authors and their notes."""
