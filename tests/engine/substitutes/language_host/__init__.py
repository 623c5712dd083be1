"""The stand-in for upstream's `pulumi-language-python` (README.md here)."""
