"""CHI@TACC's object store (Swift) on the twin."""
