"""Load the emulator's pytest plugin when the package is not installed (no pytest11 entry point)."""

from importlib.metadata import entry_points

pytest_plugins = (
    []
    if any(ep.name == "runcomfy_emulator" for ep in entry_points(group="pytest11"))
    else ["runcomfy_async.testing.plugin"]
)
