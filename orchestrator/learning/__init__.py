"""Learning: the models and a client's local training."""
