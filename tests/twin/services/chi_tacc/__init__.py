"""CHI@TACC on the twin: a second site, with a Keystone of its own, for the object store."""
