"""The whole method in one command: its stages, console lines and report."""
