"""Everything that touches pika lives in this package; callers see vsmd errors only."""
