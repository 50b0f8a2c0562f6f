"""The bottom layer: flat-parameter layout, seeding, the registry mechanism and the error types.
Imports nothing of byzlab."""
