"""The twin's identity service."""
