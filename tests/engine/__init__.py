"""Tests that run the real Pulumi engine and plugins built from Go modules."""
