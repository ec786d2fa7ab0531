"""The manual path: layers, networks, activations and losses, each differentiated by hand (no autograd)."""
