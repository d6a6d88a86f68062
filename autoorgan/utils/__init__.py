"""Small shared helpers: user-facing errors, atomic file writes, data roots and model folders, the device."""
