"""Collections and awaitable handles, one module per API; the only place paths are spelled."""
