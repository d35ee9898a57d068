"""Where servers come from: the local machine or Hetzner Cloud."""
