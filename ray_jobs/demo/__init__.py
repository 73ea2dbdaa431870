"""The whole chain on the bundled default dataset (what `make demo` runs)."""
