"""Scripts the multi-process tests launch with torchrun (not collected by pytest)."""
