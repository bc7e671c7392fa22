"""Weights & Biases: a run per stage and a sweep run (`runs`), their metric names and charts, the saved dashboard."""
