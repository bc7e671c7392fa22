"""Developer tools: `make perf`, `make perf-memory`, `make perf-checkpoints`, `make gpu-check`, settings chosen on
the validation split (`tune`, `choose_transfer`)."""
