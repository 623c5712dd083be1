"""The twin's compute service."""
