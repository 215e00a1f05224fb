"""Routing: what the monitor observes, and which server each connection gets."""
