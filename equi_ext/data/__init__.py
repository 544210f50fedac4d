"""Framework-free synthetic benchmark data."""
