"""The twin's volume service."""
