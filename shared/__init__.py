"""Protocol models, request signing and versions shared by the control plane and the agent."""
