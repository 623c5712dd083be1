"""This project's substitutes for upstream pieces of the Pulumi toolchain (README.md here)."""
