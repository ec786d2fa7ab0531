"""What runs on top: the command line, the report, the bug catalogue, the teaching walk-through."""
