"""Layer-shape definitions of reference networks (no torchvision needed)."""
