"""The twin's network service."""
