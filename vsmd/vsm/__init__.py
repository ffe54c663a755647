"""Everything that runs inside a VSM process: its loop, bus connection and agent context."""
