"""Pure segmentation logic: customer figures, RFM, lifecycle, tiers and rule segments (no I/O)."""
