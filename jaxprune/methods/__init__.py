"""The papers' pruning algorithms as pure functions (one module per paper)."""
