"""What a run is built from, resolved once on the driver: its data, partition, malicious set and server data."""
