"""The twin's image service."""
