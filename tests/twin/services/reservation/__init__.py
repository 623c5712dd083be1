"""The twin's reservation service (Blazar)."""
