"""launcher: runs every service on one machine with the embedded defaults."""
