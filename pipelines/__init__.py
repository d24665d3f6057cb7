"""Tasks, training, metrics and configuration: the layer between flows and the core."""
